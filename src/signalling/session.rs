//! The Matrix session of a profile: password login, restore, logout.
//!
//! A session is only ever restored against the SQLite stores it was created with (see
//! [`crate::profile`]): same device id, same crypto store, so end-to-end encryption keeps working
//! across restarts.

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::{OwnedDeviceId, OwnedUserId, UserId};
use matrix_sdk::{Client, ClientBuildError, SessionMeta, SessionTokens, SqliteStoreConfig};
use url::Url;

use super::errors::{MatrixError, RequestKind, root_cause};
use crate::profile::{Profile, ProfileError, StoredSession};

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    #[error(
        "already logged in as {user_id} (profile {profile}); run `d2dfs logout` first, \
         or choose another --profile"
    )]
    AlreadyLoggedIn { user_id: String, profile: String },
    #[error(
        "invalid user id {0:?}: expected @name:server, or a bare name together with --homeserver"
    )]
    InvalidUserId(String),
    #[error("invalid homeserver {0:?}: expected a URL such as https://matrix.example.org")]
    InvalidHomeserver(String),
    #[error("cannot find the homeserver of {server}: {reason}; pass --homeserver URL")]
    Discovery { server: String, reason: String },
    #[error("cannot open the local store: {0}")]
    Store(String),
}

/// What `d2dfs login` needs.
pub struct LoginRequest<'a> {
    /// `@name:server`, or a bare name when `homeserver` is given.
    pub user: &'a str,
    /// A homeserver URL; when absent, it is discovered from the user id's server name.
    pub homeserver: Option<&'a str>,
    pub password: &'a str,
    /// Shown in the user's device list.
    pub device_name: &'a str,
}

/// A logged-in client together with the stored session it came from.
pub struct Account {
    pub client: Client,
    pub session: StoredSession,
}

impl Account {
    pub fn user_id(&self) -> &str {
        &self.session.user_id
    }

    pub fn device_id(&self) -> &str {
        &self.session.device_id
    }

    pub fn homeserver(&self) -> &str {
        &self.session.homeserver
    }

    /// Classifies an error of a request made with this account's client.
    pub fn error(&self, error: &matrix_sdk::Error) -> MatrixError {
        MatrixError::from_sdk(error, self.homeserver(), RequestKind::Authenticated)
    }
}

/// Logs in with a password and stores the new session in `profile`.
pub async fn login(profile: &Profile, request: &LoginRequest<'_>) -> Result<Account, AccountError> {
    if let Ok(existing) = profile.load_session() {
        return Err(AccountError::AlreadyLoggedIn {
            user_id: existing.user_id,
            profile: profile.name().to_owned(),
        });
    }
    // A store without a session is a leftover (interrupted login or logout): a new device must
    // start from an empty crypto store.
    profile.forget()?;
    profile.ensure_data_dir()?;

    let (builder, server_label) = client_builder_for(request)?;
    let store_key = random_store_key().map_err(|e| AccountError::Store(e.to_string()))?;
    let client = builder
        .sqlite_store_with_config_and_cache_path(store_config(profile, &store_key), None::<&str>)
        .build()
        .await
        .map_err(|e| build_error(e, &server_label))?;
    let homeserver = client.homeserver().to_string();

    let response = client
        .matrix_auth()
        .login_username(request.user, request.password)
        .initial_device_display_name(request.device_name)
        .await
        .map_err(|e| MatrixError::from_sdk(&e, &homeserver, RequestKind::Login))?;

    // Discovery or the login response's well-known may have moved us to another base URL.
    let session = StoredSession {
        homeserver: client.homeserver().to_string(),
        user_id: response.user_id.to_string(),
        device_id: response.device_id.to_string(),
        access_token: response.access_token.clone(),
        store_key: crate::hex::encode(&store_key),
    };
    profile.save_session(&session)?;
    // Device keys are uploaded by a task spawned at login; let it finish before we exit.
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    profile.restrict_store_permissions()?;
    Ok(Account { client, session })
}

/// Restores the stored session of `profile` without contacting the homeserver.
pub async fn restore(profile: &Profile) -> Result<Account, AccountError> {
    let session = profile.load_session()?;
    let corrupt = |reason: String| ProfileError::CorruptSession {
        path: profile.session_path(),
        reason,
    };
    let user_id: OwnedUserId =
        UserId::parse(&session.user_id).map_err(|e| corrupt(e.to_string()))?;
    let device_id: OwnedDeviceId = session.device_id.as_str().into();
    let url = Url::parse(&session.homeserver).map_err(|e| corrupt(e.to_string()))?;
    let store_key = crate::hex::decode(&session.store_key)
        .ok_or_else(|| corrupt("store_key is not 64 hex digits".to_owned()))?;

    let client = Client::builder()
        .homeserver_url(url)
        .sqlite_store_with_config_and_cache_path(store_config(profile, &store_key), None::<&str>)
        .build()
        .await
        .map_err(|e| build_error(e, &session.homeserver))?;
    let matrix_session = MatrixSession {
        meta: SessionMeta { user_id, device_id },
        tokens: SessionTokens {
            access_token: session.access_token.clone(),
            refresh_token: None,
        },
    };
    client
        .restore_session(matrix_session)
        .await
        .map_err(|e| AccountError::Store(root_cause(&e)))?;
    // Restoring spawns E2EE set-up tasks that use the SQLite store; a command that ended while
    // they run would tear the store's worker threads down under them.
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    profile.restrict_store_permissions()?;
    Ok(Account { client, session })
}

/// What `logout` did on the homeserver's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutOutcome {
    /// The homeserver ended the session.
    LoggedOut,
    /// The homeserver had already forgotten the token.
    AlreadyRevoked,
}

/// Ends the session on the homeserver, then deletes the session and the stores.
pub async fn logout(profile: &Profile) -> Result<LogoutOutcome, AccountError> {
    let account = restore(profile).await?;
    let outcome = match account.client.logout().await {
        Ok(()) => LogoutOutcome::LoggedOut,
        Err(e) => match account.error(&e) {
            MatrixError::TokenRevoked => LogoutOutcome::AlreadyRevoked,
            other => return Err(other.into()),
        },
    };
    drop(account);
    profile.forget()?;
    Ok(outcome)
}

/// Picks how to find the homeserver: an explicit URL, or discovery from the user id.
fn client_builder_for(
    request: &LoginRequest<'_>,
) -> Result<(matrix_sdk::ClientBuilder, String), AccountError> {
    let builder = Client::builder();
    if let Some(homeserver) = request.homeserver {
        if request.user.starts_with('@') {
            UserId::parse(request.user)
                .map_err(|_| AccountError::InvalidUserId(request.user.to_owned()))?;
        }
        if homeserver.contains("://") {
            let url = Url::parse(homeserver)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| AccountError::InvalidHomeserver(homeserver.to_owned()))?;
            return Ok((builder.homeserver_url(url), homeserver.to_owned()));
        }
        return Ok((
            builder.server_name_or_homeserver_url(homeserver),
            homeserver.to_owned(),
        ));
    }
    let user_id = UserId::parse(request.user)
        .map_err(|_| AccountError::InvalidUserId(request.user.to_owned()))?;
    let server = user_id.server_name().to_owned();
    Ok((builder.server_name(&server), server.to_string()))
}

fn build_error(error: ClientBuildError, server: &str) -> AccountError {
    match error {
        ClientBuildError::AutoDiscovery(e) => AccountError::Discovery {
            server: server.to_owned(),
            reason: root_cause(&e),
        },
        ClientBuildError::Http(e) => {
            MatrixError::from_http(&e, server, RequestKind::Authenticated).into()
        }
        ClientBuildError::Url(_) => AccountError::InvalidHomeserver(server.to_owned()),
        ClientBuildError::InvalidServerName => AccountError::InvalidUserId(server.to_owned()),
        other => AccountError::Store(root_cause(&other)),
    }
}

/// matrix-sdk's SQLite stores, encrypted at rest with `key`.
///
/// A random 32-byte key rather than a passphrase: a passphrase costs 200 000 PBKDF2 rounds per
/// store on every start, and the key is as secret as the access token beside it.
fn store_config(profile: &Profile, key: &[u8; 32]) -> SqliteStoreConfig {
    SqliteStoreConfig::new(profile.store_dir()).key(Some(key))
}

fn random_store_key() -> Result<[u8; 32], getrandom::Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)?;
    Ok(key)
}
