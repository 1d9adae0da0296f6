//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Presigned URLs for private images in Tencent Cloud COS.
#[derive(Debug, Parser)]
#[command(name = "image-url-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (configuration: the embedded default, then --config, then
    /// IMAGE_URL_* and COS_* environment variables).
    Serve(ServeArgs),
    /// Print a presigned URL for an object (credentials from COS_SECRET_ID,
    /// COS_SECRET_KEY and optional COS_SECURITY_TOKEN).
    Presign(PresignArgs),
    /// Print a signed link for a key, `/api/v1/images/<key>/proxy?...&exp=...&sig=...`,
    /// to append to the server's origin (for servers with `access.link_secrets`).
    SignLink(SignLinkArgs),
    /// Serve a directory as a local COS-compatible bucket that verifies signatures made
    /// with COS_SECRET_ID / COS_SECRET_KEY (for development, demos and tests).
    DevOrigin(DevOriginArgs),
    /// Try it in a browser: a local bucket of sample images and the server in front of
    /// it, in one process, with a page of smart-image elements at /demo.
    Demo(DemoArgs),
}

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the server (and its /demo page).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// A directory of your own images to serve as the bucket (default: the bundled
    /// samples, written to a temporary directory).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// A configuration file as for `serve` (e.g. `[server] cors_origins` or `[access]`);
    /// the bucket, credentials and cache backend are the demo's own.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see the README for every key).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// Arguments of `dev-origin`.
#[derive(Debug, Args)]
pub struct DevOriginArgs {
    /// The directory whose files are the bucket's objects.
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
    /// Bucket name shown in error bodies.
    #[arg(long, default_value = "local-1250000000")]
    pub bucket: String,
}

/// Arguments of `presign`.
#[derive(Debug, Args)]
pub struct PresignArgs {
    /// The object key, e.g. images/a.jpg (a leading '/' is stripped).
    pub key: String,
    /// Bucket name with its APPID suffix, e.g. examplebucket-1250000000.
    #[arg(long)]
    pub bucket: String,
    /// Region, e.g. ap-guangzhou (the host is {bucket}.cos.{region}.myqcloud.com).
    #[arg(long, required_unless_present = "domain", conflicts_with = "domain")]
    pub region: Option<String>,
    /// Custom domain or host:port instead of the bucket's default domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// URL scheme.
    #[arg(long, default_value = "https")]
    pub scheme: String,
    /// Start of the signing window, unix seconds.
    #[arg(long)]
    pub start: Option<i64>,
    /// End of the signing window, unix seconds.
    #[arg(long, requires = "start", conflicts_with = "expires")]
    pub end: Option<i64>,
    /// Lifetime in seconds; without --start, the window starts 60 s before now (the
    /// official SDK's clock-skew allowance). Default 3600.
    #[arg(long)]
    pub expires: Option<i64>,
    /// A signed query parameter NAME=VALUE (NAME= for an empty value); repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub params: Vec<(String, String)>,
    /// A signed header NAME=VALUE the client will send; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub headers: Vec<(String, String)>,
    /// Do not sign the host header.
    #[arg(long)]
    pub no_sign_host: bool,
    /// HTTP method the URL is for.
    #[arg(long, value_enum, default_value = "get", ignore_case = true)]
    pub method: PresignMethod,
}

/// Arguments of `sign-link`.
#[derive(Args)]
pub struct SignLinkArgs {
    /// The object key, e.g. images/a.jpg (a leading '/' is stripped).
    pub key: String,
    /// The link secret (the first of `access.link_secrets`).
    #[arg(long, env = "IMAGE_URL_LINK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Lifetime of the link in seconds from now.
    #[arg(
        long,
        required_unless_present = "expires_at",
        conflicts_with = "expires_at"
    )]
    pub expires: Option<u64>,
    /// Expiry of the link, unix seconds.
    #[arg(long)]
    pub expires_at: Option<u64>,
    /// The mode the link asks for (not signed: a link works in both).
    #[arg(long, value_enum)]
    pub mode: Option<LinkMode>,
    /// A URL option NAME=VALUE: process, content_type or content_disposition; repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub params: Vec<(String, String)>,
}

/// The secret is never shown.
impl std::fmt::Debug for SignLinkArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignLinkArgs")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("expires", &self.expires)
            .field("expires_at", &self.expires_at)
            .field("mode", &self.mode)
            .field("params", &self.params)
            .finish()
    }
}

/// The modes of `/proxy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LinkMode {
    /// A 302 to the presigned URL.
    Redirect,
    /// The object streamed through the server.
    Proxy,
}

/// The methods `presign` signs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresignMethod {
    /// Download.
    Get,
    /// Metadata.
    Head,
    /// Upload.
    Put,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("{s:?} has an empty NAME")),
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => Err(format!("{s:?} is not NAME=VALUE")),
    }
}
