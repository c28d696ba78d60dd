//! `d2dfs login / whoami / rooms / logout` against a real Synapse.

use std::os::unix::fs::PermissionsExt;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::{Client, SessionMeta, SessionTokens};

use crate::harness::cli::CliProfile;
use crate::harness::homeserver::homeserver;
use crate::harness::users::{RoomSpec, TestUser, create_shared_room};

/// A client that acts with the access token stored in a d2dfs session file.
async fn client_with_stored_token(profile: &CliProfile) -> Client {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(profile.session_path()).unwrap()).unwrap();
    let client = Client::builder()
        .homeserver_url(&homeserver().url)
        .build()
        .await
        .unwrap();
    let session = MatrixSession {
        meta: SessionMeta {
            user_id: json["user_id"].as_str().unwrap().try_into().unwrap(),
            device_id: json["device_id"].as_str().unwrap().into(),
        },
        tokens: SessionTokens {
            access_token: json["access_token"].as_str().unwrap().to_owned(),
            refresh_token: None,
        },
    };
    client.restore_session(session).await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn login_whoami_restart_whoami_logout() {
    let alice = TestUser::register("alice").await;
    let profile = CliProfile::new();

    let login = profile.login(&alice).await.ok();
    assert!(
        login.stdout.contains(alice.user_id.as_str()),
        "{}",
        login.stdout
    );

    // Secrets are private to the user.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&profile.session_path()), 0o600);
    assert_eq!(mode(profile.data_dir()), 0o700);
    let store = profile.data_dir().join("store");
    let mut store_files = 0;
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        store_files += 1;
    }
    assert!(store_files > 0, "matrix-sdk created no store files");

    // Every invocation is a new process: the second whoami is a restored session.
    let first = profile.run(&["whoami"], &[]).await.ok();
    let second = profile.run(&["whoami"], &[]).await.ok();
    assert_eq!(first.field("user").as_deref(), Some(alice.user_id.as_str()));
    let device = first.field("device").expect("device line");
    assert!(
        login.stdout.contains(&device),
        "login printed another device"
    );
    assert_eq!(second.field("device"), Some(device.clone()));
    // Same crypto store: the device's identity key survived the restart.
    let key = first.field("device key").expect("device key line");
    assert_ne!(key, "(not available)");
    assert_eq!(second.field("device key"), Some(key));
    assert!(
        first
            .field("homeserver")
            .unwrap()
            .starts_with(&homeserver().url)
    );

    let token_holder = client_with_stored_token(&profile).await;
    profile.run(&["logout"], &[]).await.ok();
    assert!(!profile.session_path().exists(), "session file left behind");
    assert!(!store.exists(), "store left behind");
    // The homeserver ended the session too.
    let err = token_holder
        .whoami()
        .await
        .expect_err("token still valid after logout");
    assert!(format!("{err:?}").contains("UnknownToken"), "{err:?}");

    profile
        .run(&["whoami"], &[])
        .await
        .fails_with("not logged in");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_reads_password_file() {
    let bob = TestUser::register("bob").await;
    let profile = CliProfile::new();
    let file = profile.data_dir().join("password");
    std::fs::write(&file, format!("{}\n", bob.password)).unwrap();
    profile
        .run(
            &[
                "login",
                bob.user_id.as_str(),
                "--homeserver",
                &homeserver().url,
                "--password-file",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .await
        .ok();
    let whoami = profile.run(&["whoami"], &[]).await.ok();
    assert_eq!(whoami.field("user").as_deref(), Some(bob.user_id.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn second_login_on_one_profile_is_refused() {
    let carol = TestUser::register("carol").await;
    let profile = CliProfile::new();
    profile.login(&carol).await.ok();
    profile.login(&carol).await.fails_with("already logged in");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_one_clear_line() {
    let dave = TestUser::register("dave").await;
    let profile = CliProfile::new();
    profile
        .run(
            &[
                "login",
                dave.user_id.as_str(),
                "--homeserver",
                &homeserver().url,
            ],
            &[("D2DFS_PASSWORD", "not-the-password")],
        )
        .await
        .fails_with("wrong user name or password");
    assert!(!profile.session_path().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_is_one_clear_line() {
    let profile = CliProfile::new();
    let ghost = format!(
        "@{}:localhost",
        crate::harness::homeserver::unique_name("ghost")
    );
    profile
        .run(
            &["login", &ghost, "--homeserver", &homeserver().url],
            &[("D2DFS_PASSWORD", "whatever")],
        )
        .await
        .fails_with("wrong user name or password");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_homeserver_is_one_clear_line() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = CliProfile::new();
    profile
        .run(
            &[
                "login",
                "@x:localhost",
                "--homeserver",
                &format!("http://127.0.0.1:{port}"),
            ],
            &[("D2DFS_PASSWORD", "whatever")],
        )
        .await
        .fails_with("cannot reach the homeserver");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_is_one_clear_line() {
    let erin = TestUser::register("erin").await;
    let profile = CliProfile::new();
    profile.login(&erin).await.ok();
    // Someone (another device, an admin) ends this session behind d2dfs's back.
    client_with_stored_token(&profile)
        .await
        .logout()
        .await
        .unwrap();
    profile
        .run(&["whoami"], &[])
        .await
        .fails_with("no longer accepts this session");
    profile
        .run(&["rooms"], &[])
        .await
        .fails_with("no longer accepts this session");
    // Offline, whoami still tells what is stored; logout cleans up.
    profile.run(&["whoami", "--offline"], &[]).await.ok();
    let logout = profile.run(&["logout"], &[]).await.ok();
    assert!(logout.stdout.contains("already ended"), "{}", logout.stdout);
    assert!(!profile.session_path().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_lists_the_shared_room() {
    let frank = TestUser::register("frank").await;
    let grace = TestUser::register("grace").await;
    let frank_client = frank.client().await;
    let grace_client = grace.client().await;
    let room_id = create_shared_room(
        &frank_client,
        &[&grace_client],
        RoomSpec {
            name: "Project X",
            encrypted: true,
            public: false,
        },
    )
    .await;

    let profile = CliProfile::new();
    profile.login(&grace).await.ok();
    let table = profile.run(&["rooms"], &[]).await.ok();
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with(room_id.as_str()))
        .unwrap_or_else(|| panic!("room missing:\n{}", table.stdout));
    let columns: Vec<&str> = line
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        columns,
        [room_id.as_str(), "Project X", "yes", "invite", "2"]
    );

    let json = profile.run(&["rooms", "--json"], &[]).await.ok();
    let rooms: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let room = rooms
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room_id.as_str())
        .unwrap();
    assert_eq!(room["encrypted"], true);
    assert_eq!(room["members"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_has_help() {
    let profile = CliProfile::new();
    let top = profile.run(&["--help"], &[]).await.ok();
    for command in ["login", "logout", "whoami", "rooms"] {
        assert!(
            top.stdout.contains(command),
            "{command} missing from --help"
        );
        let help = profile.run(&[command, "--help"], &[]).await.ok();
        assert!(help.stdout.contains("Usage: d2dfs"), "{}", help.stdout);
    }
    assert!(!top.stdout.to_lowercase().contains("not implemented"));
}
