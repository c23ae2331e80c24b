use super::*;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let dir = std::env::temp_dir().join(format!("qt-cfg-{}", rand::random::<u64>()));
    let mut m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("DATA_DIR".into())
        .or_insert(dir.to_string_lossy().into_owned());
    m
}

#[test]
fn defaults_are_the_spec_defaults() {
    let c = Config::from_map(&map(&[])).unwrap();
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:10089");
    assert_eq!(c.database_url, "sqlite://data/questech.db");
    assert!(c.service_debug);
    assert_eq!(c.jwt_access_ttl, Duration::from_secs(900));
    assert_eq!(c.jwt_refresh_ttl, Duration::from_secs(2_592_000));
    assert_eq!(c.llm_max_concurrency, 256);
    assert_eq!(c.llm_queue_capacity, 1024);
    assert_eq!(c.user_rpm, 60);
    assert_eq!(c.user_max_inflight, 4);
    assert_eq!(c.signup_bonus_credits, 100);
    assert_eq!(c.max_upload_bytes, 10_485_760);
    assert_eq!(c.sms_provider, SmsProvider::Log);
    assert!(c.jwt_secret.0.len() >= 32);
}

#[test]
fn generated_dev_secret_is_kept() {
    let m = map(&[]);
    let a = Config::from_map(&m).unwrap();
    let b = Config::from_map(&m).unwrap();
    assert_eq!(a.jwt_secret, b.jwt_secret);
    assert_eq!(a.encryption_key, b.encryption_key);
}

#[test]
fn bad_values_name_the_variable() {
    for (k, v) in [
        ("BIND_ADDR", "nope"),
        ("DATABASE_URL", "postgres://x"),
        ("REDIS_URL", "::"),
        ("USER_RPM", "sixty"),
        ("JWT_SECRET_KEY", "short"),
        ("SERVICE_DEBUG", "maybe"),
        ("ENCRYPTION_KEY", "AAAA"),
        ("SMS_PROVIDER", "pigeon"),
        ("OPENAI_BASE_URL", "not a url"),
    ] {
        let e = Config::from_map(&map(&[(k, v)])).unwrap_err();
        assert_eq!(e.var, k, "{e}");
        assert!(e.to_string().contains(k));
    }
}

#[test]
fn production_requires_jwt_secret() {
    let e = Config::from_map(&map(&[("DATABASE_URL", "mysql://root@localhost/x")])).unwrap_err();
    assert_eq!(e.var, "JWT_SECRET_KEY");
    let c = Config::from_map(&map(&[
        ("DATABASE_URL", "mysql://root@localhost/x"),
        ("SERVICE_DEBUG", "true"),
    ]))
    .unwrap();
    assert!(c.service_debug);
}

#[test]
fn secrets_do_not_print() {
    let c = Config::from_map(&map(&[("OPENAI_API_KEY", "sk-very-secret")])).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("sk-very-secret"));
    assert!(!dbg.contains(&c.jwt_secret.0));
}

#[test]
fn upload_store_is_local_unless_s3_is_chosen() {
    let c = Config::from_map(&map(&[])).unwrap();
    assert_eq!(c.upload_store, UploadStore::Local);
    let c = Config::from_map(&map(&[
        ("UPLOAD_STORE", "s3"),
        ("S3_BUCKET", "qt-uploads"),
        ("S3_ENDPOINT", "http://127.0.0.1:9000/"),
        ("S3_ACCESS_KEY_ID", "id"),
        ("S3_SECRET_ACCESS_KEY", "secret"),
        ("S3_PREFIX", "/a/b"),
    ]))
    .unwrap();
    let UploadStore::S3(s3) = c.upload_store else {
        panic!("s3 expected")
    };
    assert_eq!(s3.bucket, "qt-uploads");
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.region, "us-east-1");
    assert_eq!(s3.prefix, "a/b/");
    assert_eq!(s3.credentials.as_ref().map(|c| c.0.as_str()), Some("id"));
    assert!(
        !format!("{s3:?}").contains("secret"),
        "the secret never prints"
    );
    // Keys are optional (the AWS default chain), and so is the endpoint (AWS itself).
    let c = Config::from_map(&map(&[("UPLOAD_STORE", "s3"), ("S3_BUCKET", "b-1.x")])).unwrap();
    let UploadStore::S3(s3) = c.upload_store else {
        panic!("s3 expected")
    };
    assert_eq!(
        (s3.endpoint, s3.credentials, s3.prefix),
        (None, None, String::new())
    );
}

#[test]
fn bad_upload_store_values_name_the_variable() {
    let s3 = [("UPLOAD_STORE", "s3"), ("S3_BUCKET", "qt-uploads")];
    for (extra, var) in [
        (&[("UPLOAD_STORE", "ftp")][..], "UPLOAD_STORE"),
        (&[("S3_BUCKET", "")][..], "S3_BUCKET"),
        (&[("S3_BUCKET", "Upper_Case")][..], "S3_BUCKET"),
        (&[("S3_BUCKET", "a/b")][..], "S3_BUCKET"),
        (&[("S3_ENDPOINT", "localhost:9000")][..], "S3_ENDPOINT"),
        (&[("S3_ENDPOINT", "ftp://x")][..], "S3_ENDPOINT"),
        (&[("S3_REGION", "us east")][..], "S3_REGION"),
        (&[("S3_ACCESS_KEY_ID", "id")][..], "S3_SECRET_ACCESS_KEY"),
        (&[("S3_SECRET_ACCESS_KEY", "s")][..], "S3_ACCESS_KEY_ID"),
        (&[("S3_PREFIX", "a/../b")][..], "S3_PREFIX"),
        (&[("S3_PREFIX", "a//b")][..], "S3_PREFIX"),
        (&[("S3_PREFIX", "a b")][..], "S3_PREFIX"),
    ] {
        let mut pairs = s3.to_vec();
        pairs.extend_from_slice(extra);
        let e = Config::from_map(&map(&pairs)).unwrap_err();
        assert_eq!(e.var, var, "{extra:?}: {e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
    }
}
