//! `image-url-server serve`: builds the cache, the service and the HTTP server from the
//! configuration, runs until Ctrl-C or SIGTERM, then drains in-flight requests.

use std::sync::Arc;
use std::time::Duration;

use cos_credentials::{
    CommandProvider, CredentialsCache, CvmRoleProvider, EnvProvider, ProfileProvider,
    ProvideCredentials, RefreshConfig, WebIdentityProvider,
};
use cos_sign::{CosSigner, Credentials, Endpoint};
use figment::Figment;
use image_url_service::{
    AccessPolicy, AlertConfig, ImageUrlService, MaintenanceConfig, ServiceConfig,
};
use proxy_http::{
    AccessLines, AccessLog, AccessLogError, AccessLogFormat, AccessLogOptions, AccessLogWriter,
    ApiConfig, AppState, ExtraRoutes, HttpServerHandle, WebhookSink,
};
use url_cache::{EvictionPolicy, MemoryCache, RedisCache, RedisConfig, UrlCache};

use crate::cli::ServeArgs;
use crate::config::{self, Config};

/// Runs the server.
pub fn run(args: &ServeArgs) -> Result<(), String> {
    let (config, figment) = config::load(args.config.as_deref())?;
    let _log_writer = crate::logging::init(config.server.json_logs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(config, figment, Hooks::default()))
}

/// Given the service (none when it is unconfigured), more routes for the public listener.
pub type RoutesHook = Box<dyn FnOnce(Option<&ImageUrlService>) -> Option<ExtraRoutes> + Send>;

/// What a caller adds to [`serve`] (the demo: its page and controls).
#[derive(Default)]
pub struct Hooks {
    /// Given the service (none when it is unconfigured), more routes for the public
    /// listener.
    pub routes: Option<RoutesHook>,
    /// Called with the public address once the server listens.
    pub listening: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
}

/// Builds the cache, the service and the HTTP server from `config`, serves until Ctrl-C
/// or SIGTERM, then drains in-flight requests. Runs inside a tokio runtime.
pub async fn serve(config: Config, figment: Figment, hooks: Hooks) -> Result<(), String> {
    let policy: EvictionPolicy = config.cache.policy.parse().map_err(|e| {
        format!(
            "cache.policy from {}: {e}",
            config::source_of(&figment, "cache.policy")
        )
    })?;
    let service_config = service_config(&config, &figment)?;
    let access = access_policy(&config, &figment)?;
    let admin_listen = match config.server.admin_listen.as_str() {
        "" => None,
        addr => Some(addr.parse::<std::net::SocketAddr>().map_err(|e| {
            format!(
                "server.admin_listen from {}: {addr:?} is not host:port ({e})",
                config::source_of(&figment, "server.admin_listen")
            )
        })?),
    };
    let endpoint = endpoint(&config, &figment)?;
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    {
        let cache: Arc<dyn UrlCache> = match config.cache.backend.as_str() {
            "memory" => Arc::new(
                MemoryCache::builder()
                    .capacity(config.cache.max_entries)
                    .policy(policy)
                    .build(),
            ),
            "redis" => {
                let mut redis = RedisConfig::new(&config.cache.redis_url);
                redis.pool_size = config.cache.pool_size;
                redis.max_entries = config.cache.max_entries;
                redis.policy = policy;
                redis.namespace = match config.cache.namespace.as_str() {
                    "auto" => Some(endpoint.authority().to_owned()),
                    "" => None,
                    custom => Some(custom.to_owned()),
                };
                redis.migrate_unnamespaced = config.cache.migrate_unnamespaced;
                redis.index_shards = config.cache.index_shards;
                redis.access_flush_interval =
                    Duration::from_millis(config.cache.access_flush_ms.max(1));
                redis.l1_max_entries = config.cache.l1_max_entries;
                redis.l1_ttl = Duration::from_secs(config.cache.l1_ttl_secs.max(1));
                let cache = RedisCache::connect(redis).await.map_err(|e| {
                    format!(
                        "cache.redis_url from {}: {e}",
                        config::source_of(&figment, "cache.redis_url")
                    )
                })?;
                Arc::new(cache)
            }
            other => {
                return Err(format!(
                    "cache.backend from {}: {other:?} is not memory or redis",
                    config::source_of(&figment, "cache.backend")
                ))
            }
        };
        let builder =
            match signing_source(&config, &figment).await? {
                SigningSource::Fixed(credentials) => Ok(ImageUrlService::builder(
                    CosSigner::new(credentials, endpoint),
                    cache,
                )),
                SigningSource::Rotating(credentials) => Ok(
                    ImageUrlService::builder_with_credentials(endpoint, credentials, cache),
                ),
                SigningSource::Missing(missing) => {
                    tracing::warn!("{missing}; URL endpoints answer 503 until it is set");
                    Err(missing)
                }
            };
        let service = match builder {
            Ok(builder) => Ok(builder
                .config(service_config)
                .access(access)
                .build()
                .map_err(|e| e.to_string())?),
            Err(missing) => Err(missing),
        };
        let background = service.as_ref().ok().cloned();
        let cache = background
            .as_ref()
            .map(|service| Arc::clone(service.cache()));
        let alerts = alert_config(&config, &figment)?;
        let mut api = api_config(&config, &figment)?;
        // `logging::init`'s format puts the request id on a request's lines.
        api.request_spans = false;
        // Held until the server has stopped: dropping it writes the last lines.
        let _access_log_writer = match access_log(&config, &figment)? {
            Some((log, writer)) => {
                api = api.access_log(log);
                Some(writer)
            }
            None => {
                api.access_log = AccessLines::Off;
                None
            }
        };
        let state = match service {
            Ok(service) => AppState::new(service, api),
            Err(why) => AppState::unconfigured(why, api),
        };
        let extra = hooks.routes.and_then(|routes| routes(background.as_ref()));
        let server =
            HttpServerHandle::start_with(state, config.server.listen, admin_listen, workers, extra)
                .map_err(|e| {
                    format!(
                        "server.listen {} (or server.admin_listen) from {}: {e}",
                        config.server.listen,
                        config::source_of(&figment, "server.listen")
                    )
                })?;
        let admin_addr = server
            .admin_addr()
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::info!(addr = %server.addr(), admin_addr, workers, backend = %config.cache.backend, "image-url server listening");
        if let Some(listening) = hooks.listening {
            listening(server.addr());
        }

        // Cleanup of expired entries is the service's own maintenance task.
        let maintenance = background.map(|service| {
            let mut maintenance = MaintenanceConfig::default();
            maintenance.cleanup_interval =
                Duration::from_secs(config.cache.cleanup_interval_secs.max(1));
            let r = &config.refresher;
            let refresher = &mut maintenance.refresher;
            refresher.enabled = r.enabled;
            refresher.interval = Duration::from_secs(r.interval_secs.max(1));
            refresher.threshold =
                (r.threshold_secs > 0).then(|| Duration::from_secs(r.threshold_secs));
            refresher.batch_size = r.batch_size.max(1);
            refresher.max_concurrent = r.max_concurrent.max(1);
            refresher.max_per_run = r.max_per_run.max(1);
            refresher.idle_drop = Duration::from_secs(r.idle_drop_secs.max(1));
            maintenance.alerts = alerts.clone();
            service.spawn_maintenance(maintenance)
        });

        crate::logging::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        server.stop(true).await;
        if let Some(maintenance) = maintenance {
            maintenance.shutdown().await;
        }
        // What the cache buffers in the process (Redis: a second of access bookkeeping)
        // is written now, or the eviction order forgets the last reads. Bounded: a cache
        // that does not answer must not hold up the exit.
        if let Some(cache) = cache {
            match tokio::time::timeout(Duration::from_secs(2), cache.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pending cache writes lost at shutdown"),
                Err(_) => tracing::warn!(
                    "pending cache writes lost at shutdown: the cache did not answer within 2 s"
                ),
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `[alerts]`: `None` when off.
fn alert_config(config: &Config, figment: &Figment) -> Result<Option<AlertConfig>, String> {
    let a = &config.alerts;
    if !a.enabled {
        return Ok(None);
    }
    let mut alerts = AlertConfig::default();
    alerts.evaluate_every = Duration::from_secs(a.evaluate_every_secs.max(1));
    alerts.refresh_failure_ratio = a.refresh_failure_ratio;
    alerts.refresh_failure_runs = a.refresh_failure_runs.max(1);
    alerts.degraded_after = Duration::from_secs(a.degraded_after_secs);
    alerts.max_refresh_lag = Duration::from_secs(a.max_refresh_lag_secs);
    alerts.credentials_expire_within = Duration::from_secs(a.credentials_expire_within_secs);
    alerts.min_hit_rate = a.min_hit_rate;
    alerts.min_requests = a.min_requests;
    alerts.hold_for = Duration::from_secs(a.hold_for_secs);
    if !a.instance.is_empty() {
        alerts.instance = a.instance.clone();
    }
    if !a.webhook_urls.is_empty() {
        let sink = WebhookSink::new(&a.webhook_urls).map_err(|e| {
            format!(
                "alerts.webhook_urls from {}: {e}",
                config::source_of(figment, "alerts.webhook_urls")
            )
        })?;
        alerts.sinks.push(Arc::new(sink));
    }
    Ok(Some(alerts))
}

/// What the service signs with.
enum SigningSource {
    /// Credentials that do not change while the process runs (the configuration, or
    /// environment variables, which a running process cannot see change).
    Fixed(Credentials),
    /// A provider's credentials, refreshed in the background.
    Rotating(CredentialsCache),
    /// Nothing configured: the URL endpoints answer 503 with this message.
    Missing(String),
}

const MISSING: &str = "COS credentials missing: set cos.secret_id and cos.secret_key (or COS_SECRET_ID and COS_SECRET_KEY, or TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY), or choose another cos.credentials source";

/// `[cos] credentials`: the source of the signing credentials.
async fn signing_source(config: &Config, figment: &Figment) -> Result<SigningSource, String> {
    let cos = &config.cos;
    let at = |key: &str| config::source_of(figment, key);
    let kind = match cos.credentials.as_str() {
        "" if !cos.secret_id.is_empty() => "static",
        "" => "env",
        other => other,
    };
    let provider: Box<dyn ProvideCredentials> = match kind {
        "static" => {
            if cos.secret_id.is_empty() || cos.secret_key.is_empty() {
                return Ok(SigningSource::Missing(MISSING.to_owned()));
            }
            let credentials = Credentials::new(&cos.secret_id, &cos.secret_key);
            return Ok(SigningSource::Fixed(if cos.security_token.is_empty() {
                credentials
            } else {
                credentials.with_session_token(&cos.security_token, None)
            }));
        }
        "env" => {
            return Ok(match EnvProvider::new().load().await {
                Ok(credentials) => SigningSource::Fixed(credentials),
                Err(_) => SigningSource::Missing(MISSING.to_owned()),
            })
        }
        "profile" => {
            let mut profile = ProfileProvider::new().profile(&cos.profile);
            if !cos.profile_file.is_empty() {
                profile = profile.path(&cos.profile_file);
            }
            Box::new(profile)
        }
        "cvm-role" => Box::new(
            CvmRoleProvider::new()
                .metadata_url(&cos.metadata_url)
                .role(&cos.role),
        ),
        "web-identity" => {
            let provider = WebIdentityProvider::new();
            Box::new(match cos.sts_endpoint.as_str() {
                "" => provider,
                endpoint => provider
                    .sts_endpoint(endpoint)
                    .map_err(|e| format!("cos.sts_endpoint from {}: {e}", at("cos.sts_endpoint")))?,
            })
        }
        "command" => Box::new(
            CommandProvider::new(cos.command.iter().cloned())
                .map_err(|e| format!("cos.command from {}: {e}", at("cos.command")))?,
        ),
        other => {
            return Err(format!(
                "cos.credentials from {}: {other:?} is not static, env, profile, cvm-role, web-identity or command",
                at("cos.credentials")
            ))
        }
    };
    let credentials = CredentialsCache::spawn(provider, RefreshConfig::default());
    // Give the first load a moment so that the first requests find credentials; if it
    // fails, serve anyway (503 until a retry succeeds: /readyz says why).
    match tokio::time::timeout(Duration::from_secs(10), credentials.ready()).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::warn!(source = kind, error = %err, "no COS credentials yet; retrying in the background")
        }
        Err(_) => tracing::warn!(
            source = kind,
            "the first COS credentials load is slow; retrying in the background"
        ),
    }
    Ok(SigningSource::Rotating(credentials))
}

fn endpoint(config: &Config, figment: &Figment) -> Result<Endpoint, String> {
    let at = |key: &str| config::source_of(figment, key);
    let scheme = config
        .cos
        .scheme
        .parse()
        .map_err(|e| format!("cos.scheme from {}: {e}", at("cos.scheme")))?;
    let endpoint = if config.cos.domain.is_empty() {
        Endpoint::bucket(&config.cos.bucket, &config.cos.region)
            .map_err(|e| format!("cos.bucket/cos.region from {}: {e}", at("cos.bucket")))?
    } else {
        Endpoint::custom_domain(&config.cos.domain)
            .map_err(|e| format!("cos.domain from {}: {e}", at("cos.domain")))?
    };
    Ok(endpoint.with_scheme(scheme))
}

/// The access log of `[server] access_log`, unless it is `off` — or `RUST_LOG` turns
/// off `image_url::access`, as it could when the access line was a `tracing` event.
fn access_log(
    config: &Config,
    figment: &Figment,
) -> Result<Option<(AccessLog, AccessLogWriter)>, String> {
    let server = &config.server;
    if matches!(server.access_log.as_str(), "off" | "")
        || !tracing::enabled!(target: "image_url::access", tracing::Level::INFO)
    {
        return Ok(None);
    }
    let mut options = AccessLogOptions::default();
    options.sample_rate = server.access_log_sample_rate;
    if server.json_logs {
        options.format = AccessLogFormat::Json;
    }
    let out: Box<dyn std::io::Write + Send> = match server.access_log.as_str() {
        "stderr" => {
            // Whole lines, at most 4 KiB a write: atomic on a pipe, so they never
            // interleave with the other log lines on stderr.
            options.write_buffer_bytes = 4096;
            Box::new(std::io::stderr())
        }
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    format!(
                        "server.access_log from {}: cannot open {path}: {e}",
                        config::source_of(figment, "server.access_log")
                    )
                })?,
        ),
    };
    AccessLog::start(out, options).map(Some).map_err(|e| {
        let key = match e {
            AccessLogError::SampleRate(_) => "server.access_log_sample_rate",
            _ => "server.access_log",
        };
        format!("{key} from {}: {e}", config::source_of(figment, key))
    })
}

fn api_config(config: &Config, figment: &Figment) -> Result<ApiConfig, String> {
    let secs = |key: &str, value: u64| {
        if value == 0 {
            Err(format!(
                "proxy.{key} from {}: must be at least 1",
                config::source_of(figment, &format!("proxy.{key}"))
            ))
        } else {
            Ok(Duration::from_secs(value))
        }
    };
    let tokens: Vec<String> = std::iter::once(&config.server.admin_token)
        .chain(&config.server.admin_tokens)
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    if tokens.iter().any(|t| t.len() < 16) {
        let key = if config.server.admin_token.is_empty() || config.server.admin_token.len() >= 16 {
            "server.admin_tokens"
        } else {
            "server.admin_token"
        };
        return Err(format!(
            "{key} from {}: an admin token must be at least 16 bytes",
            config::source_of(figment, key)
        ));
    }
    let mut api = ApiConfig::default()
        .admin_tokens(tokens)
        .cors_origins(&config.server.cors_origins)
        .map_err(|e| {
            format!(
                "server.cors_origins from {}: {e}",
                config::source_of(figment, "server.cors_origins")
            )
        })?;
    api.rate_limit.requests_per_second = config.limits.requests_per_second;
    api.rate_limit.burst = config.limits.burst;
    api.rate_limit.trusted_proxies = config
        .limits
        .trusted_proxies
        .iter()
        .map(|net| {
            // A bare address is a /32 or /128.
            net.parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!(
                        "limits.trusted_proxies from {}: {net:?} is not an address or a CIDR",
                        config::source_of(figment, "limits.trusted_proxies")
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    if config.limits.max_body_bytes == 0 || config.limits.max_preload_keys == 0 {
        return Err(format!(
            "[limits] from {}: max_body_bytes and max_preload_keys must be at least 1",
            config::source_of(figment, "limits.max_body_bytes")
        ));
    }
    if config.server.header_timeout_ms == 0 {
        return Err(format!(
            "server.header_timeout_ms from {}: must be at least 1",
            config::source_of(figment, "server.header_timeout_ms")
        ));
    }
    api.header_timeout = Duration::from_millis(config.server.header_timeout_ms);
    api.max_body_bytes = config.limits.max_body_bytes;
    api.max_preload_keys = config.limits.max_preload_keys;
    api.proxy_connect_timeout = secs("connect_timeout_secs", config.proxy.connect_timeout_secs)?;
    api.proxy_read_timeout = secs("read_timeout_secs", config.proxy.read_timeout_secs)?;
    api.proxy_timeout = secs("timeout_secs", config.proxy.timeout_secs)?;
    if config.proxy.max_object_bytes == 0 || config.proxy.max_concurrent == 0 {
        return Err(format!(
            "[proxy] from {}: max_object_bytes and max_concurrent must be at least 1",
            config::source_of(figment, "proxy.max_object_bytes")
        ));
    }
    api.proxy_max_object_bytes = config.proxy.max_object_bytes;
    api.proxy_max_concurrent = config.proxy.max_concurrent;
    Ok(api)
}

fn access_policy(config: &Config, figment: &Figment) -> Result<AccessPolicy, String> {
    let access = &config.access;
    AccessPolicy::builder()
        .allowed_prefixes(access.allowed_prefixes.iter().cloned())
        .denied_prefixes(access.denied_prefixes.iter().cloned())
        .link_secrets(&access.link_secrets)
        .allowed_content_types(access.allowed_content_types.iter().cloned())
        .allow_processing(access.allow_processing)
        .allowed_processing_prefixes(access.allowed_processing_prefixes.iter().cloned())
        .build()
        .map_err(|e| {
            format!(
                "access.link_secrets from {}: {e}",
                config::source_of(figment, "access.link_secrets")
            )
        })
}

fn service_config(config: &Config, figment: &Figment) -> Result<ServiceConfig, String> {
    let mut service = ServiceConfig::default();
    service.ttl = Duration::from_secs(config.signing.ttl_secs);
    service.pre_refresh = Duration::from_secs(config.signing.pre_refresh_secs);
    service.align = config.signing.align_secs.map(Duration::from_secs);
    service.cache_timeout = Duration::from_millis(config.cache.timeout_ms);
    service.validate().map_err(|e| {
        format!(
            "[signing] from {}: {e}",
            config::source_of(figment, "signing.ttl_secs")
        )
    })?;
    Ok(service)
}
