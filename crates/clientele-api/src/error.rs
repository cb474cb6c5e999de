//! The one mapping from domain errors to HTTP `application/problem+json` answers.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use clientele_core::problem::{self, Problem};
use clientele_store::StoreError;
use serde::de::DeserializeOwned;

/// An error answer. Every handler returns `Result<_, ApiError>`. Boxed so that `Result`s stay
/// small on the success path.
#[derive(Debug)]
pub struct ApiError(pub Box<Problem>);

impl ApiError {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> ApiError {
        ApiError(Box::new(Problem::new(status.as_u16(), slug, title, detail)))
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unprocessable(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            "Invalid field",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", m)
            }
            StoreError::Invalid(m) => ApiError::unprocessable(m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Store unavailable",
                    format!(
                        "{m}; the request was not applied, so it is safe to retry once the database is back"
                    ),
                )
            }
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Store unavailable",
                    "the store could not complete the request; it was not applied, so it is safe to retry",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"clientele-admin\""),
            );
        }
        resp
    }
}

/// `axum::Json`, with rejections turned into problem+json that say what to fix.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = rejection.body_text();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "body-too-large",
            "Request body too large",
            "the body is larger than [admin].max_body_bytes; send less per request",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::unprocessable(detail),
        _ => ApiError::bad_request(detail),
    }
}

impl<T: IntoResponseJson> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Marker for types answered as JSON.
pub trait IntoResponseJson: serde::Serialize {}
impl<T: serde::Serialize> IntoResponseJson for T {}

/// `axum::extract::Query`, with rejections as problem+json.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // `?limit=` means no limit given: parameters with empty values are treated as absent,
        // the same for every endpoint, rather than failing to parse as a number or a time.
        let query = parts.uri.query().unwrap_or("");
        let given: String = query
            .split('&')
            .filter(|pair| {
                pair.split_once('=')
                    .map_or(!pair.is_empty(), |(_, v)| !v.is_empty())
            })
            .collect::<Vec<_>>()
            .join("&");
        let uri: axum::http::Uri = format!("/?{given}")
            .parse()
            .map_err(|_| ApiError::bad_request("the query string is not valid"))?;
        match axum::extract::Query::<T>::try_from_uri(&uri) {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(rejection.body_text())
}
