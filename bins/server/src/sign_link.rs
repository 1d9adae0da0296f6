//! `image-url-server sign-link`: a signed link to the server's own API.

use cos_sign::ObjectKey;
use image_url_service::{LinkSigner, UrlOptions, MIN_SECRET_LEN};

use crate::cli::{LinkMode, SignLinkArgs};

/// The link's path and query, or a one-line error (never containing the secret).
pub fn run(args: &SignLinkArgs, now: i64) -> Result<String, String> {
    let key = ObjectKey::new(&args.key).map_err(|e| format!("<KEY>: {e}"))?;
    let exp = match (args.expires, args.expires_at) {
        (Some(secs), None) => u64::try_from(now)
            .ok()
            .and_then(|now| now.checked_add(secs))
            .ok_or("--expires: too far in the future")?,
        (None, Some(at)) => at,
        _ => return Err("give --expires or --expires-at".into()),
    };
    let mut options = UrlOptions::new();
    for (name, value) in &args.params {
        options = match name.as_str() {
            "process" => options.process(value),
            "content_type" => options.content_type(value),
            "content_disposition" => options.content_disposition(value),
            other => {
                return Err(format!(
                    "--param {other}: not a URL option (process, content_type, content_disposition)"
                ))
            }
        };
    }
    let sig = LinkSigner::new(&args.secret)
        .map_err(|_| format!("--secret: must be at least {MIN_SECRET_LEN} bytes"))?
        .sign(&key, &options, exp);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(mode) = args.mode {
        query.append_pair(
            "mode",
            match mode {
                LinkMode::Redirect => "redirect",
                LinkMode::Proxy => "proxy",
            },
        );
    }
    for (name, value) in [
        ("process", &options.process),
        ("content_type", &options.content_type),
        ("content_disposition", &options.content_disposition),
    ] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    query.append_pair("exp", &exp.to_string());
    query.append_pair("sig", &sig);
    // A `.` or `..` segment would be resolved away by browsers: then every `/` is
    // escaped too, so the key reaches the server as it was signed.
    let dot_segment = key.as_str().split('/').any(|s| s == "." || s == "..");
    let set = if dot_segment {
        &KEY_IN_PATH_ALL
    } else {
        KEY_IN_PATH
    };
    let path = percent_encoding::utf8_percent_encode(key.as_str(), set);
    Ok(format!("/api/v1/images/{path}/proxy?{}", query.finish()))
}

/// Everything but unreserved characters and `/` is escaped (the server takes `%2F` and
/// `/` alike; `/` reads better).
const KEY_IN_PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// [`KEY_IN_PATH`] with `/` escaped too.
const KEY_IN_PATH_ALL: percent_encoding::AsciiSet = KEY_IN_PATH.add(b'/');
