//! The `presign` command, run as a real process.

use std::process::{Command, Output};

const ID: &str = "AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q";
const KEY: &str = "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz";

fn presign(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_image-url-server"));
    cmd.arg("presign")
        .args(args)
        .env_remove("COS_SECRET_ID")
        .env_remove("COS_SECRET_KEY")
        .env_remove("COS_SECURITY_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn creds() -> Vec<(&'static str, &'static str)> {
    vec![("COS_SECRET_ID", ID), ("COS_SECRET_KEY", KEY)]
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

const BEIJING: [&str; 4] = [
    "--bucket",
    "examplebucket-1250000000",
    "--region",
    "ap-beijing",
];

#[test]
fn prints_the_sdk_url_alone() {
    let mut args = vec!["exampleobject"];
    args.extend(BEIJING);
    args.extend(["--start", "1557989151", "--end", "1557996351"]);
    let out = presign(&args, &creds());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "https://examplebucket-1250000000.cos.ap-beijing.myqcloud.com/exampleobject?q-sign-algorithm=sha1&q-ak=AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q&q-sign-time=1557989151%3B1557996351&q-key-time=1557989151%3B1557996351&q-header-list=host&q-url-param-list=&q-signature=27cf30444826da1b67c09aa099a56cfe3a6a1cc5\n"
    );
    assert!(stderr(&out).is_empty());
}

#[test]
fn params_headers_token_and_domain_match_the_sdk_vectors() {
    // Vector "ci-thumbnail": a parameter without value.
    let mut args = vec!["a.jpg", "--param", "imageMogr2/thumbnail/200x="];
    args.extend(BEIJING);
    args.extend(["--start", "1557989151", "--end", "1557996351"]);
    let out = presign(&args, &creds());
    assert!(stdout(&out).contains("q-url-param-list=imagemogr2%252fthumbnail%252f200x&q-signature=80aff0548acc63b7b8def6c12f852d3b2d0093c1&imageMogr2%2Fthumbnail%2F200x=\n"));

    // Vector "range-header".
    let mut args = vec!["a.jpg", "--header", "Range=bytes=0-1023"];
    args.extend(BEIJING);
    args.extend(["--start", "1557989151", "--end", "1557996351"]);
    let out = presign(&args, &creds());
    assert!(
        stdout(&out).contains("q-signature=3eb2852f0c5d4ccfe13603c8a3ed228408b9463a"),
        "{}",
        stdout(&out)
    );

    // Vector "sts-token".
    let mut env = creds();
    env.push(("COS_SECURITY_TOKEN", "tok-EXAMPLE+/=abc123"));
    let mut args = vec!["a.jpg"];
    args.extend(BEIJING);
    args.extend(["--start", "1557989151", "--end", "1557996351"]);
    let out = presign(&args, &env);
    assert!(stdout(&out).ends_with("q-signature=b4b6896313a2b41aeb7bf3781f0a5bf0e02cc1c1&x-cos-security-token=tok-EXAMPLE%2B%2F%3Dabc123\n"));

    // Vectors "custom-domain" and "no-host" (with http).
    let out = presign(
        &[
            "a.jpg",
            "--bucket",
            "examplebucket-1250000000",
            "--domain",
            "img.example.com",
            "--start",
            "1557989151",
            "--end",
            "1557996351",
        ],
        &creds(),
    );
    assert!(stdout(&out).starts_with("https://img.example.com/a.jpg?"));
    assert!(stdout(&out).contains("q-signature=96363415253a416d018a1ecee6c5bbeb70897243"));
    let mut args = vec!["images/user123/2024/image.jpg", "--no-sign-host"];
    args.extend(BEIJING);
    args.extend(["--start", "1557989151", "--end", "1557996351"]);
    let out = presign(&args, &creds());
    assert!(stdout(&out).contains(
        "q-header-list=&q-url-param-list=&q-signature=bc18d2e3ca339820365530d67996e21f59a04b75"
    ));
}

#[test]
fn expires_signs_from_now_less_sixty_seconds() {
    let mut args = vec![
        "a.jpg",
        "--expires",
        "600",
        "--method",
        "head",
        "--scheme",
        "http",
    ];
    args.extend(BEIJING);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = presign(&args, &creds());
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out);
    assert!(url.starts_with("http://"));
    let time = url
        .split("q-sign-time=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let (start, end) = time.split_once("%3B").unwrap();
    let (start, end): (i64, i64) = (start.parse().unwrap(), end.parse().unwrap());
    assert_eq!(end - start, 660);
    assert!(
        (before - 60..=before - 50).contains(&start),
        "start {start} vs now {before}"
    );
}

#[test]
fn bad_input_exits_non_zero_with_one_line() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec!["a/..", "--bucket", "b-1", "--region", "r"],
            creds(),
            "normalises to nothing",
        ),
        (
            vec!["a.jpg", "--bucket", "b-1", "--region", "r"],
            vec![("COS_SECRET_ID", ID)],
            "COS_SECRET_KEY is not set",
        ),
        (vec!["a.jpg", "--bucket", "b-1"], creds(), "--region"),
        (
            vec!["a.jpg", "--bucket", "B_1", "--region", "r"],
            creds(),
            "invalid bucket",
        ),
        (
            vec![
                "a.jpg", "--bucket", "b-1", "--region", "r", "--param", "novalue",
            ],
            creds(),
            "NAME=VALUE",
        ),
        (
            vec![
                "a.jpg", "--bucket", "b-1", "--region", "r", "--method", "DELETE",
            ],
            creds(),
            "DELETE",
        ),
        (
            vec![
                "a.jpg", "--bucket", "b-1", "--region", "r", "--scheme", "ftp",
            ],
            creds(),
            "scheme",
        ),
        (
            vec!["a.jpg", "--bucket", "b-1", "--region", "r", "--start", "10"],
            creds(),
            "--start needs",
        ),
        (
            vec![
                "a.jpg", "--bucket", "b-1", "--region", "r", "--start", "10", "--end", "5",
            ],
            creds(),
            "signing window",
        ),
        (
            vec!["a.jpg", "--bucket", "b-1", "--domain", "http://x/y"],
            creds(),
            "--domain",
        ),
        (
            vec![
                "a.jpg",
                "--bucket",
                "b-1",
                "--region",
                "r",
                "--header",
                "bad name=1",
            ],
            creds(),
            "header",
        ),
    ];
    for (args, env, needle) in cases {
        let out = presign(&args, &env);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains(KEY));
    }
}
