//! A batch job: reads object keys from stdin, one per line, and prints a presigned URL
//! for each (or `error: …` for a bad key), in order, 100 keys per batch.
//!
//! Run: `printf 'images/a.jpg\nimages/b.jpg\n' | COS_SECRET_ID=… COS_SECRET_KEY=… \
//!   cargo run -p image-url-service --example presign_stdin -- examplebucket-1250000000 ap-guangzhou`

use std::io::BufRead;
use std::sync::Arc;

use cos_sign::{CosSigner, Credentials, Endpoint};
use image_url_service::{ImageUrlService, UrlOptions};
use url_cache::MemoryCache;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(bucket), Some(region)) = (args.next(), args.next()) else {
        return Err(
            "usage: presign_stdin BUCKET REGION (credentials in COS_SECRET_ID, COS_SECRET_KEY)"
                .into(),
        );
    };
    let credentials = Credentials::new(
        std::env::var("COS_SECRET_ID").map_err(|_| "COS_SECRET_ID is not set")?,
        std::env::var("COS_SECRET_KEY").map_err(|_| "COS_SECRET_KEY is not set")?,
    );
    let signer = CosSigner::new(credentials, Endpoint::bucket(&bucket, &region)?);
    let service = ImageUrlService::builder(signer, Arc::new(MemoryCache::new())).build()?;

    let keys: Vec<String> = std::io::stdin().lock().lines().collect::<Result<_, _>>()?;
    for chunk in keys.chunks(service.config().max_batch) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        // One answer per distinct key: print in input order, repeats included.
        let items = service.get_many(&refs, &UrlOptions::new(), None).await?;
        for key in chunk {
            let item = items
                .iter()
                .find(|i| &i.key == key)
                .ok_or("missing answer")?;
            match &item.result {
                Ok(url) => println!("{}", url.url),
                Err(err) => println!("error: {err}"),
            }
        }
    }
    Ok(())
}
