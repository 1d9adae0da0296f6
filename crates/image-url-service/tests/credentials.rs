//! Signing with credentials that rotate: a provider switched by the test, a credentials
//! cache refreshing it, and the service on the memory cache with a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cos_credentials::{CredentialsCache, CredentialsError, ProvideCredentials, RefreshConfig};
use cos_sign::{Credentials, Endpoint, ObjectKey};
use image_url_service::{ImageUrlService, ServiceError, UrlOptions};
use time::OffsetDateTime;
use url_cache::{ManualClock, MemoryCache};

/// `secs` Unix seconds as the API's time.
fn at(secs: f64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

/// A multiple of the default stable window (3600 − 900 s).
const T0: f64 = 1_699_998_300.0;

/// Answers whatever the test last set.
#[derive(Debug)]
struct Switch(Mutex<Result<Credentials, &'static str>>);

impl Switch {
    fn set(&self, answer: Result<Credentials, &'static str>) {
        *self.0.lock().unwrap() = answer;
    }
}

#[async_trait]
impl ProvideCredentials for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }

    async fn load(&self) -> cos_credentials::Result<Credentials> {
        self.0
            .lock()
            .unwrap()
            .clone()
            .map_err(|why| CredentialsError::Unavailable {
                source_name: "switch",
                reason: why.into(),
                cause: None,
            })
    }
}

/// Temporary credentials expiring at `T0 + after` (the service's clock).
fn temporary(id: &str, after: i64) -> Credentials {
    let at = OffsetDateTime::from_unix_timestamp(T0 as i64 + after).unwrap();
    Credentials::new(id, "key").with_session_token(format!("token-{id}"), Some(at))
}

struct Setup {
    service: ImageUrlService,
    credentials: CredentialsCache,
    provider: Arc<Switch>,
    clock: Arc<ManualClock>,
}

fn setup(first: Result<Credentials, &'static str>) -> Setup {
    let provider = Arc::new(Switch(Mutex::new(first)));
    let mut refresh = RefreshConfig::default();
    // The test's credentials expire in the past of the real clock the cache schedules
    // by, so it asks again every `retry_min`: keep that short.
    refresh.retry_min = Duration::from_millis(5);
    refresh.retry_max = Duration::from_millis(20);
    let credentials = CredentialsCache::spawn(provider.clone(), refresh);
    let clock = Arc::new(ManualClock::from_unix_secs(T0));
    let cache = Arc::new(MemoryCache::builder().clock(clock.clone()).build());
    let service = ImageUrlService::builder_with_credentials(
        Endpoint::bucket("examplebucket-1250000000", "ap-guangzhou").unwrap(),
        credentials.clone(),
        cache,
    )
    .clock(clock.clone())
    .build()
    .unwrap();
    Setup {
        service,
        credentials,
        provider,
        clock,
    }
}

/// Waits (on the refresher's progress, not on time) until the cache holds `id`.
async fn until_holding(credentials: &CredentialsCache, id: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while credentials.current().is_none_or(|c| c.secret_id() != id) {
            credentials.next_attempt().await;
        }
    })
    .await
    .expect("the refresher picks up the new credentials");
}

async fn get(
    service: &ImageUrlService,
    k: &str,
) -> image_url_service::Result<image_url_service::ImageUrl> {
    service
        .get_url(&ObjectKey::new(k).unwrap(), &UrlOptions::new())
        .await
}

#[tokio::test]
async fn urls_end_with_their_credentials_and_rotation_needs_no_restart() {
    let s = setup(Ok(temporary("AKIDone", 2000)));
    s.credentials.ready().await.unwrap();
    let first = get(&s.service, "a.jpg").await.unwrap();
    assert!(first.url.contains("q-ak=AKIDone"), "{}", first.url);
    assert_eq!(
        first.expires_at,
        at(T0 + 2000.0),
        "capped at the credentials' expiry"
    );

    s.provider.set(Ok(temporary("AKIDtwo", 7200)));
    until_holding(&s.credentials, "AKIDtwo").await;
    // Still valid and outside the threshold: the cached URL (old credentials) is served.
    let cached = get(&s.service, "a.jpg").await.unwrap();
    assert!(cached.from_cache && cached.url == first.url, "{cached:?}");
    // New keys are signed with the new credentials at once.
    let other = get(&s.service, "b.jpg").await.unwrap();
    assert!(
        other.url.contains("q-ak=AKIDtwo") && other.expires_at == at(T0 + 3600.0),
        "{}",
        other.url
    );

    // Inside the threshold (900 s) of the old URL: re-signed with the new credentials.
    s.clock.advance(Duration::from_secs(1200));
    let renewed = get(&s.service, "a.jpg").await.unwrap();
    assert!(renewed.url.contains("q-ak=AKIDtwo"), "{}", renewed.url);
    assert!(renewed.expires_at <= at(T0 + 7200.0));
    assert_eq!(s.service.stats().credentials.unwrap().rotations, 1);
}

#[tokio::test]
async fn a_failing_provider_with_valid_credentials_keeps_signing_and_reports() {
    let s = setup(Ok(temporary("AKIDone", 3600)));
    s.credentials.ready().await.unwrap();
    s.provider.set(Err("metadata service down"));
    s.credentials.next_attempt().await;
    s.credentials.next_attempt().await;
    let url = get(&s.service, "a.jpg").await.unwrap();
    assert!(url.url.contains("q-ak=AKIDone"));
    let status = s.service.stats().credentials.unwrap();
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert!(status.last_error.unwrap().contains("metadata service down"));
}

#[tokio::test]
async fn expired_credentials_fail_without_retry_and_missing_ones_say_why() {
    let s = setup(Ok(temporary("AKIDone", 100)));
    s.credentials.ready().await.unwrap();
    s.provider.set(Err("metadata service down"));
    s.clock.advance(Duration::from_secs(200));
    let err = get(&s.service, "a.jpg").await.unwrap_err();
    assert!(matches!(err, ServiceError::CredentialsExpired), "{err}");
    assert!(!err.is_retryable());

    let never = setup(Err("no role bound"));
    assert!(never.credentials.ready().await.is_err());
    let err = get(&never.service, "a.jpg").await.unwrap_err();
    match &err {
        ServiceError::CredentialsUnavailable(why) => {
            assert!(why.contains("no role bound"), "{why}")
        }
        other => panic!("{other}"),
    }
    assert!(err.is_retryable());
    // It recovers on its own once the provider answers.
    never.provider.set(Ok(temporary("AKIDlate", 3600)));
    until_holding(&never.credentials, "AKIDlate").await;
    assert!(get(&never.service, "a.jpg")
        .await
        .unwrap()
        .url
        .contains("q-ak=AKIDlate"));
}
