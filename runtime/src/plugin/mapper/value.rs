//! A row as the host's query gives it → the value stored under its key.

use base64::Engine;
use serde_json::{Map, Value};

use super::config::{MapperConfig, MapperType};
use crate::contract::{CacheValue, DbValue, Entry, Outcome};

/// A cell as JSON: numbers and booleans as themselves, bytes as base64.
pub fn json_of(value: &DbValue) -> Value {
    match value {
        DbValue::Null => Value::Null,
        DbValue::Boolean(b) => Value::Bool(*b),
        DbValue::Int(i) => Value::from(*i),
        DbValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        DbValue::Text(text) => Value::String(text.clone()),
        DbValue::Bytes(bytes) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        DbValue::IntList(list) => Value::from(list.clone()),
        DbValue::TextList(list) => Value::from(list.clone()),
    }
}

/// A cell as a hash field's or a string's text; `None` for null.
fn text_of(value: &DbValue) -> Option<String> {
    match value {
        DbValue::Null => None,
        DbValue::Text(text) => Some(text.clone()),
        other => Some(super::template::text_of(&json_of(other))),
    }
}

/// The outcome for one row: its stored columns as `config.kind` says.
pub fn outcome(columns: &[String], row: &[DbValue], config: &MapperConfig) -> Outcome {
    let ttl_seconds = config.ttl.map(|ttl| ttl.as_secs().min(u64::from(u32::MAX)) as u32);
    let put = |entry| Outcome::Put(CacheValue { entry, ttl_seconds });
    let stored = || columns.iter().zip(row).filter(|(name, _)| config.stores(name));
    match config.kind {
        MapperType::Json => {
            let object: Map<String, Value> = ordered(stored().collect(), config)
                .map(|(name, cell)| (config.field(name).to_owned(), json_of(cell)))
                .collect();
            put(Entry::Json(Value::Object(object).to_string()))
        }
        MapperType::Hash => put(Entry::Hash(
            ordered(stored().collect(), config)
                .filter_map(|(name, cell)| Some((config.field(name).to_owned(), text_of(cell)?)))
                .collect(),
        )),
        MapperType::String => match stored().next().and_then(|(_, cell)| text_of(cell)) {
            Some(text) => put(Entry::Text(text)),
            None => Outcome::Delete,
        },
    }
}

/// The outcome for an event's row image (Debezium JSON): its cells as the
/// image encodes them, stored as a database row would be.
pub fn image_outcome(image: &Map<String, Value>, config: &MapperConfig) -> Outcome {
    let columns: Vec<String> = image.keys().cloned().collect();
    let cells: Vec<DbValue> = image.values().map(cell_of).collect();
    outcome(&columns, &cells, config)
}

/// A JSON image's cell as the query's would be; objects and arrays as their JSON text.
fn cell_of(value: &Value) -> DbValue {
    match value {
        Value::Null => DbValue::Null,
        Value::Bool(b) => DbValue::Boolean(*b),
        Value::Number(n) => n.as_i64().map_or_else(|| DbValue::Float(n.as_f64().unwrap_or(f64::NAN)), DbValue::Int),
        Value::String(text) => DbValue::Text(text.clone()),
        other => DbValue::Text(other.to_string()),
    }
}

/// The stored cells in the order `columns` lists them, else the table's.
fn ordered<'a>(
    mut cells: Vec<(&'a String, &'a DbValue)>,
    config: &MapperConfig,
) -> impl Iterator<Item = (&'a String, &'a DbValue)> {
    if let Some(order) = &config.columns {
        cells.sort_by_key(|(name, _)| order.iter().position(|c| c == *name));
    }
    cells.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> MapperConfig {
        toml::from_str(text).unwrap()
    }

    fn row() -> (Vec<String>, Vec<DbValue>) {
        let columns = ["id", "name", "email", "note"].map(str::to_owned).to_vec();
        let cells = vec![DbValue::Int(7), DbValue::Text("Ann".into()), DbValue::Text("a@x".into()), DbValue::Null];
        (columns, cells)
    }

    #[test]
    fn json_keeps_nulls_and_renames() {
        let (columns, cells) = row();
        let mapper =
            config("key = \"user:{id}\"\nexclude = [\"email\"]\nrename = { name = \"full_name\" }\nttl = \"1h\"");
        let Outcome::Put(CacheValue { entry: Entry::Json(text), ttl_seconds }) = outcome(&columns, &cells, &mapper)
        else {
            panic!("a put")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            serde_json::json!({"id": 7, "full_name": "Ann", "note": null})
        );
        assert_eq!(ttl_seconds, Some(3600));
    }

    #[test]
    fn hash_leaves_nulls_out_and_follows_the_columns_order() {
        let (columns, cells) = row();
        let mapper = config("key = \"user:{id}\"\ntype = \"hash\"\ncolumns = [\"note\", \"email\", \"id\"]");
        let Outcome::Put(CacheValue { entry: Entry::Hash(fields), .. }) = outcome(&columns, &cells, &mapper) else {
            panic!("a put")
        };
        assert_eq!(fields, vec![("email".to_owned(), "a@x".to_owned()), ("id".to_owned(), "7".to_owned())]);
    }

    #[test]
    fn an_event_image_is_stored_as_its_row_would_be() {
        let image = serde_json::json!({"id": 7, "name": "Ann", "price": "2.50", "tags": ["a"], "gone": null});
        let mapper = config("key = \"user:{id}\"\ntype = \"hash\"\nexclude = [\"price\"]");
        let Outcome::Put(CacheValue { entry: Entry::Hash(fields), .. }) =
            image_outcome(image.as_object().unwrap(), &mapper)
        else {
            panic!("a put")
        };
        let expected = [("id", "7"), ("name", "Ann"), ("tags", "[\"a\"]")];
        assert_eq!(fields, expected.map(|(f, v)| (f.to_owned(), v.to_owned())).to_vec());
    }

    #[test]
    fn a_null_string_deletes_the_key() {
        let (columns, cells) = row();
        let name = config("key = \"user:{id}\"\ntype = \"string\"\ncolumns = [\"name\"]");
        assert!(
            matches!(outcome(&columns, &cells, &name), Outcome::Put(CacheValue { entry: Entry::Text(t), .. }) if t == "Ann")
        );
        let note = config("key = \"user:{id}\"\ntype = \"string\"\ncolumns = [\"note\"]");
        assert_eq!(outcome(&columns, &cells, &note), Outcome::Delete);
    }
}
