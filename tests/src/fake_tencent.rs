//! Local stand-ins for Tencent Cloud's credential endpoints: the CVM metadata service
//! (rotating a role's temporary credentials on its own schedule, as the real one does)
//! and STS's `AssumeRoleWithWebIdentity`. Every set they issue is added to a
//! [`CredentialSet`], which a dev origin accepts, so a test checks URLs end to end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cos_sign::Credentials;
use dev_origin::CredentialSet;
use time::OffsetDateTime;

const ROLES: &str = "/latest/meta-data/cam/security-credentials/";

/// What the fakes have in common: issuing numbered temporary credentials.
struct Issuer {
    prefix: &'static str,
    lifetime: Duration,
    issued: Mutex<Vec<Credentials>>,
    accepted: CredentialSet,
    down: AtomicBool,
    requests: AtomicU64,
}

impl Issuer {
    fn issue(&self) -> Credentials {
        let mut issued = self.issued.lock().unwrap();
        let n = issued.len() + 1;
        let expires = OffsetDateTime::now_utc().unix_timestamp() + self.lifetime.as_secs() as i64;
        let credentials = Credentials::new(
            format!("AKID{}{n:04}", self.prefix),
            format!("tmp-secret-{}-{n}", self.prefix),
        )
        .with_session_token(
            format!("tmp-token-{}-{n}", self.prefix),
            Some(OffsetDateTime::from_unix_timestamp(expires).unwrap()),
        );
        self.accepted.add(credentials.clone());
        issued.push(credentials.clone());
        credentials
    }

    fn document(credentials: &Credentials) -> serde_json::Value {
        let expires = credentials.expires_at().unwrap();
        serde_json::json!({
            "TmpSecretId": credentials.secret_id(),
            "TmpSecretKey": credentials.secret_key(),
            "Token": credentials.session_token(),
            "ExpiredTime": expires.unix_timestamp(),
            "Expiration": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
        })
    }
}

/// Shared controls of a running fake.
#[derive(Clone)]
pub struct FakeHandle {
    issuer: Arc<Issuer>,
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
}

impl FakeHandle {
    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every set issued so far, oldest first.
    pub fn issued(&self) -> Vec<Credentials> {
        self.issuer.issued.lock().unwrap().clone()
    }

    /// The credentials with `secret_id`, if this fake issued them.
    pub fn find(&self, secret_id: &str) -> Option<Credentials> {
        self.issued()
            .into_iter()
            .find(|c| c.secret_id() == secret_id)
    }

    /// Answer 500 to everything (`true`) or serve again.
    pub fn set_down(&self, down: bool) {
        self.issuer.down.store(down, Ordering::SeqCst);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.issuer.requests.load(Ordering::SeqCst)
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

async fn start<F>(issuer: Arc<Issuer>, routes: F) -> FakeHandle
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let data = web::Data::from(issuer.clone());
    let server =
        HttpServer::new(move || App::new().app_data(data.clone()).configure(routes.clone()))
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .expect("bind a loopback port");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    FakeHandle {
        issuer,
        addr,
        server: handle,
    }
}

/// The CVM metadata service for one role. It keeps a role's credentials until they are
/// `rotate_after` old, then issues new ones valid for `lifetime`, as the real service
/// rotates ahead of expiry on its own schedule.
pub struct FakeMetadata;

struct MetadataState {
    role: String,
    rotate_after: Duration,
    last: Mutex<Option<(std::time::Instant, Credentials)>>,
}

impl FakeMetadata {
    /// Starts it, adding every issued set to `accepted`.
    pub async fn start(
        role: &str,
        lifetime: Duration,
        rotate_after: Duration,
        accepted: CredentialSet,
    ) -> FakeHandle {
        let issuer = Arc::new(Issuer {
            prefix: "cvm",
            lifetime,
            issued: Mutex::default(),
            accepted,
            down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        });
        let state = web::Data::new(MetadataState {
            role: role.to_owned(),
            rotate_after,
            last: Mutex::new(None),
        });
        start(issuer, move |cfg| {
            cfg.app_data(state.clone())
                .route(ROLES, web::get().to(list_roles))
                .route(&format!("{ROLES}{{role}}"), web::get().to(role_credentials));
        })
        .await
    }
}

async fn list_roles(issuer: web::Data<Issuer>, state: web::Data<MetadataState>) -> HttpResponse {
    issuer.requests.fetch_add(1, Ordering::SeqCst);
    if issuer.down.load(Ordering::SeqCst) {
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok().body(format!("{}\n", state.role))
}

async fn role_credentials(
    issuer: web::Data<Issuer>,
    state: web::Data<MetadataState>,
    role: web::Path<String>,
) -> HttpResponse {
    issuer.requests.fetch_add(1, Ordering::SeqCst);
    if issuer.down.load(Ordering::SeqCst) {
        return HttpResponse::InternalServerError().finish();
    }
    if *role != state.role {
        return HttpResponse::NotFound().finish();
    }
    let mut last = state.last.lock().unwrap();
    let credentials = match &*last {
        Some((at, credentials)) if at.elapsed() < state.rotate_after => credentials.clone(),
        _ => {
            let credentials = issuer.issue();
            *last = Some((std::time::Instant::now(), credentials.clone()));
            credentials
        }
    };
    let mut doc = Issuer::document(&credentials);
    doc["Code"] = "Success".into();
    HttpResponse::Ok().json(doc)
}

/// STS's `AssumeRoleWithWebIdentity`: checks the action, region, role, provider and
/// token it is sent, and answers new credentials valid for `lifetime` each time.
pub struct FakeSts;

/// What a web identity exchange must carry.
#[derive(Clone)]
pub struct Expected {
    /// `RoleArn`.
    pub role_arn: String,
    /// `ProviderId`.
    pub provider_id: String,
    /// `WebIdentityToken` (the token file's content).
    pub token: String,
    /// `X-TC-Region`.
    pub region: String,
}

impl FakeSts {
    /// Starts it, adding every issued set to `accepted`.
    pub async fn start(
        expected: Expected,
        lifetime: Duration,
        accepted: CredentialSet,
    ) -> FakeHandle {
        let issuer = Arc::new(Issuer {
            prefix: "sts",
            lifetime,
            issued: Mutex::default(),
            accepted,
            down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        });
        let expected = web::Data::new(expected);
        start(issuer, move |cfg| {
            cfg.app_data(expected.clone())
                .default_service(web::to(assume_role));
        })
        .await
    }
}

async fn assume_role(
    req: HttpRequest,
    body: web::Bytes,
    issuer: web::Data<Issuer>,
    expected: web::Data<Expected>,
) -> HttpResponse {
    issuer.requests.fetch_add(1, Ordering::SeqCst);
    let error = |code: &str, message: &str| {
        HttpResponse::Ok().json(serde_json::json!({
            "Response": { "Error": { "Code": code, "Message": message }, "RequestId": "fake" }
        }))
    };
    if issuer.down.load(Ordering::SeqCst) {
        return HttpResponse::InternalServerError().finish();
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("x-tc-action") != "AssumeRoleWithWebIdentity"
        || header("x-tc-version") != "2018-08-13"
    {
        return error("InvalidAction", "unexpected action or version");
    }
    if header("x-tc-region") != expected.region {
        return error("InvalidParameter.Region", "unexpected region");
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error("InvalidParameter", "body is not JSON");
    };
    let field = |name: &str| request[name].as_str().unwrap_or("").to_owned();
    if field("RoleArn") != expected.role_arn || field("ProviderId") != expected.provider_id {
        return error("InvalidParameter.RoleArn", "unknown role or provider");
    }
    if field("WebIdentityToken").trim() != expected.token {
        return error("AuthFailure.InvalidWebIdentityToken", "bad token");
    }
    let credentials = issuer.issue();
    let doc = Issuer::document(&credentials);
    HttpResponse::Ok().json(serde_json::json!({
        "Response": {
            "Credentials": { "Token": doc["Token"], "TmpSecretId": doc["TmpSecretId"], "TmpSecretKey": doc["TmpSecretKey"] },
            "ExpiredTime": doc["ExpiredTime"],
            "Expiration": doc["Expiration"],
            "RequestId": "fake",
        }
    }))
}
