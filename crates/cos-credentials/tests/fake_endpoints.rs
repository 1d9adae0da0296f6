//! The CVM role and web identity providers against local fakes of the metadata service
//! and STS, and a credentials cache following a rotating metadata service.

use std::time::Duration;

use cos_credentials::{
    CredentialsCache, CredentialsError, CvmRoleProvider, ProvideCredentials, RefreshConfig, Vars,
    WebIdentityProvider,
};
use dev_origin::CredentialSet;
use image_url_tests::fake_tencent::{Expected, FakeMetadata, FakeSts};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn cvm_role_lists_the_only_role_and_loads_its_credentials() {
    let metadata = FakeMetadata::start("app-role", HOUR, HOUR, CredentialSet::default()).await;
    let provider = CvmRoleProvider::new().metadata_url(metadata.url());
    let loaded = provider.load().await.unwrap();
    let issued = metadata.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(loaded, issued[0], "id, key, token and expiry as issued");

    let named = CvmRoleProvider::new()
        .metadata_url(metadata.url())
        .role("app-role");
    assert_eq!(
        named.load().await.unwrap().secret_id(),
        issued[0].secret_id()
    );
    let wrong = CvmRoleProvider::new()
        .metadata_url(metadata.url())
        .role("other-role");
    assert!(matches!(
        wrong.load().await.unwrap_err(),
        CredentialsError::Invalid { .. }
    ));

    metadata.set_down(true);
    let err = provider.load().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    metadata.stop().await;
    let err = provider.load().await.unwrap_err();
    assert!(
        err.is_retryable() && !err.to_string().contains("tmp-secret"),
        "{err}"
    );
}

#[tokio::test]
async fn web_identity_exchanges_the_token_file_at_sts() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "oidc-token-1\n").unwrap();
    let expected = Expected {
        role_arn: "qcs::cam::uin/100000000001:roleName/app".into(),
        provider_id: "tke-oidc".into(),
        token: "oidc-token-1".into(),
        region: "ap-guangzhou".into(),
    };
    let sts = FakeSts::start(expected.clone(), HOUR, CredentialSet::default()).await;
    let vars = Vars::fixed([
        ("TKE_ROLE_ARN", expected.role_arn.as_str()),
        ("TKE_PROVIDER_ID", expected.provider_id.as_str()),
        ("TKE_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("TKE_REGION", expected.region.as_str()),
    ]);
    let provider = WebIdentityProvider::new()
        .with_vars(vars)
        .sts_endpoint(&sts.url())
        .unwrap();
    let loaded = provider.load().await.unwrap();
    assert_eq!(loaded, sts.issued()[0]);

    // The kubelet rotates the token file: a stale token is refused by STS, and the
    // provider reads the file again on the next load.
    std::fs::write(&token_file, "oidc-token-stale").unwrap();
    assert!(provider.load().await.is_err());
    std::fs::write(&token_file, "oidc-token-1").unwrap();
    assert_eq!(provider.load().await.unwrap(), sts.issued()[1]);

    let unconfigured = WebIdentityProvider::new().with_vars(Vars::fixed([("TKE_REGION", "x")]));
    assert!(unconfigured.load().await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn the_cache_follows_a_rotating_metadata_service_before_expiry() {
    // Credentials live 4 s and the service rotates them after 1 s; the cache asks again
    // at half their lifetime and picks up the new set while the old one is still valid.
    let lifetime = Duration::from_secs(4);
    let metadata = FakeMetadata::start(
        "app-role",
        lifetime,
        Duration::from_secs(1),
        CredentialSet::default(),
    )
    .await;
    let cache = CredentialsCache::spawn(
        CvmRoleProvider::new().metadata_url(metadata.url()),
        RefreshConfig::default(),
    );
    let first = cache.ready().await.unwrap();
    let generation = cache.generation();
    while cache.generation() == generation {
        tokio::time::timeout(Duration::from_secs(10), cache.next_attempt())
            .await
            .expect("the cache keeps refreshing");
    }
    let second = cache.current().unwrap();
    assert_ne!(second.secret_id(), first.secret_id());
    assert!(
        time::OffsetDateTime::now_utc() < first.expires_at().unwrap(),
        "rotated only after the first credentials expired"
    );
    assert_eq!(cache.status().rotations, 1);
}
