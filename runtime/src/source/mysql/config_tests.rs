use super::{MySqlCaptureConfig, Visibility};

fn parse(extra: &str) -> Result<MySqlCaptureConfig, toml::de::Error> {
    toml::from_str(&format!(
        "url = \"mysql://root@127.0.0.1:3306\"\ntables = [\"shop.item\"]\nserver_id = 7\n\
         dead_letter_url = \"redis://127.0.0.1:6379\"\n{extra}"
    ))
}

#[test]
fn visibility_is_on_unless_turned_off() {
    assert_eq!(parse("").unwrap().visibility, Visibility::On);
    assert_eq!(parse("visibility = \"on\"").unwrap().visibility, Visibility::On);
    assert_eq!(parse("visibility = \"off\"").unwrap().visibility, Visibility::Off);
    let refused = parse("visibility = \"sometimes\"").unwrap_err().to_string();
    assert!(refused.contains("unknown variant `sometimes`"), "{refused}");
    let refused = parse("visibility_timeout = \"5s\"").unwrap_err().to_string();
    assert!(refused.contains("unknown field `visibility_timeout`"), "{refused}");
}
