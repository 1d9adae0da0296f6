//! `image-url-server presign`: a command-line presigner.

use cos_sign::{
    unix_now, CosSigner, Credentials, Endpoint, Method, ObjectKey, PresignOptions, Scheme,
    SigningWindow,
};

use crate::cli::{PresignArgs, PresignMethod};

/// Default URL lifetime when neither `--end` nor `--expires` is given.
const DEFAULT_EXPIRES_SECS: i64 = 3600;

/// Builds the URL described by `args`, with credentials looked up through `env`.
/// Errors are single lines meant for stderr; they never contain a secret.
pub fn run(args: &PresignArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let credentials = credentials_from_env(env)?;
    let scheme: Scheme = args.scheme.parse().map_err(|e| format!("--scheme: {e}"))?;
    let endpoint = match (&args.domain, &args.region) {
        (Some(domain), _) => {
            // The bucket is still validated: it names what the domain serves.
            Endpoint::check_bucket_name(&args.bucket).map_err(|e| format!("--bucket: {e}"))?;
            Endpoint::custom_domain(domain).map_err(|e| format!("--domain: {e}"))?
        }
        (None, Some(region)) => {
            Endpoint::bucket(&args.bucket, region).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("one of --region or --domain is required".into()),
    }
    .with_scheme(scheme);
    let key = ObjectKey::new(&args.key).map_err(|e| format!("<KEY>: {e}"))?;
    let window = window(args, unix_now())?;

    let mut options = PresignOptions::new()
        .method(match args.method {
            PresignMethod::Get => Method::Get,
            PresignMethod::Head => Method::Head,
            PresignMethod::Put => Method::Put,
        })
        .sign_host(!args.no_sign_host);
    for (name, value) in &args.params {
        options = options.param(name, value);
    }
    for (name, value) in &args.headers {
        options = options.header(name, value);
    }
    CosSigner::new(credentials, endpoint)
        .presign_url(&key, window, &options)
        .map_err(|e| e.to_string())
}

pub fn credentials_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, String> {
    let required = |name: &str| {
        env(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{name} is not set (export the COS credentials first)"))
    };
    let credentials = Credentials::new(required("COS_SECRET_ID")?, required("COS_SECRET_KEY")?);
    Ok(match env("COS_SECURITY_TOKEN").filter(|t| !t.is_empty()) {
        Some(token) => credentials.with_session_token(token, None),
        None => credentials,
    })
}

fn window(args: &PresignArgs, now: i64) -> Result<SigningWindow, String> {
    let checked = |r: cos_sign::Result<SigningWindow>| r.map_err(|e| e.to_string());
    match (args.start, args.end, args.expires) {
        (Some(start), Some(end), None) => checked(SigningWindow::new(start, end)),
        (Some(start), None, Some(expires)) => checked(SigningWindow::starting_at(start, expires)),
        (Some(_), None, None) => Err("--start needs --end or --expires".into()),
        (None, None, expires) => checked(SigningWindow::from_now_with_skew(
            now,
            expires.unwrap_or(DEFAULT_EXPIRES_SECS),
        )),
        (None, Some(_), _) => Err("--end needs --start".into()),
        (Some(_), Some(_), Some(_)) => Err("give --end or --expires, not both".into()),
    }
}
