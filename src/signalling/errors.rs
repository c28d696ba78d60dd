//! Turning matrix-sdk errors into one clear line for the user.
//!
//! matrix-sdk errors nest several layers deep (`Error::Http(HttpError::Api(..Server(..)))`) and
//! their `Display` is rarely what a user needs. Every Matrix call of d2dfs goes through
//! [`MatrixError::from_sdk`] so the same failure reads the same everywhere.

use matrix_sdk::HttpError;
use matrix_sdk::ruma::api::error::ErrorKind;

/// A failed exchange with the homeserver, classified by what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot reach the homeserver at {homeserver}: {reason}")]
    Unreachable { homeserver: String, reason: String },
    #[error(
        "the homeserver no longer accepts this session (access token revoked or expired); \
         run `d2dfs logout`, then `d2dfs login`"
    )]
    TokenRevoked,
    #[error("login failed: wrong user name or password")]
    WrongCredentials,
    #[error("the account has been deactivated")]
    UserDeactivated,
    #[error("the homeserver refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

/// The situation a request was made in; decides how an ambiguous server answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A password login: `M_FORBIDDEN` means wrong credentials.
    Login,
    /// Any authenticated request.
    Authenticated,
}

impl MatrixError {
    /// Classifies an error of `matrix_sdk::Client` calls.
    pub fn from_sdk(error: &matrix_sdk::Error, homeserver: &str, kind: RequestKind) -> Self {
        match error {
            matrix_sdk::Error::Http(http) => Self::from_http(http, homeserver, kind),
            other => Self::Other(root_cause(other)),
        }
    }

    /// Classifies an HTTP-level error.
    pub fn from_http(error: &HttpError, homeserver: &str, kind: RequestKind) -> Self {
        if let HttpError::Reqwest(e) = error {
            return Self::Unreachable {
                homeserver: homeserver.to_owned(),
                reason: root_cause(e),
            };
        }
        if let HttpError::Cached(inner) = error {
            return Self::from_http(inner, homeserver, kind);
        }
        if let Some(api) = error.as_client_api_error() {
            return match api.error_kind() {
                Some(ErrorKind::UnknownToken(_)) if kind == RequestKind::Login => {
                    Self::WrongCredentials
                }
                Some(ErrorKind::UnknownToken(_)) => Self::TokenRevoked,
                Some(ErrorKind::Forbidden) if kind == RequestKind::Login => Self::WrongCredentials,
                Some(ErrorKind::UserDeactivated) => Self::UserDeactivated,
                _ => Self::Refused(format!("{api}")),
            };
        }
        Self::Other(root_cause(error))
    }
}

/// The innermost error's message: "connection refused" rather than "error sending request".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    let text = current.to_string();
    // io errors read "Connection refused (os error 111)": keep the words, drop the number.
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
