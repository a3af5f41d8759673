//! Binlog row images → the JSON the Debezium MySQL connector emits with its
//! default settings, except DECIMAL, which stays an exact string.
//!
//! mysql_common decodes the raw row but leaves much of the meaning in the
//! table map: column names, signedness, ENUM/SET labels and the primary key
//! live only in its optional metadata, so everything here reads both. The
//! per-type JSON forms are in `debezium_json`, shared with `query_values`.

use mysql_async::Value;
use mysql_async::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use serde_json::{Map, Number, Value as Json};

use super::debezium_json::{
    BINARY_CHARSET, base64, bits, date, datetime, float, single, text, time, timestamp, utf8, wall_clock,
};
use super::schema::{self, TableSchema};

/// One row image of a binlog rows event rendered as Debezium MySQL JSON,
/// plus the primary-key columns' values as a JSON object (Debezium's key).
///
/// `key` holds only the primary-key columns present in this image: with
/// `binlog_row_image=FULL` that is all of them, with MINIMAL an UPDATE's
/// after image may lack them, so take the key from its before image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenderedRow {
    pub image: Map<String, Json>,
    pub key: Map<String, Json>,
}

/// Renders one before or after image of a rows event.
///
/// `tme` is the table map event the row belongs to (from
/// `BinlogStream::get_tme(table_id)`); `schema` the catalogue's description of
/// the table, for servers whose table maps carry no column names
/// (`binlog_row_metadata` MINIMAL or NO_LOG), already checked against `tme`.
/// Fails, naming the column, on values the table map cannot explain, and on a
/// table map without names when there is no `schema`.
pub fn render_row(
    mut row: BinlogRow,
    tme: &TableMapEvent<'_>,
    schema: Option<&TableSchema>,
) -> Result<RenderedRow, String> {
    let table = TableColumns::read(tme, schema)?;
    let row_columns = row.columns();
    let mut rendered = RenderedRow::default();
    let mut next = 0;
    for (position, column) in row_columns.iter().enumerate() {
        let raw_name = column.name_str();
        // Without names in the table map, mysql_common names a column `@<index>`.
        let unnamed = raw_name.strip_prefix('@').and_then(|i| i.parse::<usize>().ok()).filter(|_| table.from_catalogue);
        // A row holds only the image's columns, in table order: walk forward to this one.
        let index = match unnamed {
            Some(index) if index < table.names.len() => index,
            _ => (next..table.names.len())
                .find(|&i| table.names[i] == raw_name)
                .ok_or_else(|| format!("{}: row column `{raw_name}` is not in the table map", table.name))?,
        };
        next = index + 1;
        let name = table.names[index].as_str();
        let kind = tme
            .get_column_type(index)
            .ok()
            .flatten()
            .ok_or_else(|| format!("{}: column `{name}` has an unknown type", table.name))?;
        let context = Column {
            kind,
            meta: tme.get_column_metadata(index).unwrap_or(&[]),
            unsigned: table.unsigned[index],
            charset: match column.character_set() {
                // The table map's own (MINIMAL has it), else the catalogue's (NO_LOG).
                0 => table.charsets.get(index).copied().flatten().unwrap_or(0),
                own => own,
            },
            labels: table.labels[index].as_deref(),
        };
        let value = match row.take(position) {
            Some(value) => {
                context.render(value).map_err(|what| format!("{}: column `{name}` ({kind:?}): {what}", table.name))?
            }
            None => Json::Null,
        };
        if table.primary_key.contains(&index) {
            rendered.key.insert(name.to_string(), value.clone());
        }
        rendered.image.insert(name.to_owned(), value);
    }
    Ok(rendered)
}

/// What the table map's optional metadata says about each column, indexed by
/// column position.
struct TableColumns {
    name: String,
    names: Vec<String>,
    unsigned: Vec<bool>,
    labels: Vec<Option<Vec<String>>>,
    primary_key: Vec<usize>,
    /// Character sets from the catalogue, for table maps without them (NO_LOG).
    charsets: Vec<Option<u16>>,
    /// Names, signedness, labels and key came from the catalogue.
    from_catalogue: bool,
}

impl TableColumns {
    /// Reads the metadata itself, because mysql_common's row decoder drops
    /// ENUM/SET labels and misses primary-key columns not listed in ascending
    /// order (`PRIMARY KEY (b, a)`).
    fn read(tme: &TableMapEvent<'_>, schema: Option<&TableSchema>) -> Result<Self, String> {
        let name = format!("{}.{}", tme.database_name(), tme.table_name());
        if !schema::names_columns(tme)
            && let Some(schema) = schema
        {
            return Ok(Self {
                name,
                names: schema.columns.iter().map(|c| c.name.clone()).collect(),
                unsigned: schema.columns.iter().map(|c| c.unsigned).collect(),
                labels: schema.columns.iter().map(|c| c.labels.clone()).collect(),
                primary_key: schema.primary_key.clone(),
                charsets: schema.columns.iter().map(|c| Some(c.charset)).collect(),
                from_catalogue: true,
            });
        }
        let bad = |e: std::io::Error| format!("{name}: unreadable table map metadata: {e}");
        let (mut names, mut signedness, mut enums, mut sets, mut primary_key) = (None, vec![], vec![], vec![], vec![]);
        for field in tme.iter_optional_meta() {
            match field.map_err(bad)? {
                OptionalMetadataField::ColumnName(list) => {
                    let list = list.iter_names().map(|n| n.map(|n| n.name().into_owned()));
                    names = Some(list.collect::<Result<Vec<_>, _>>().map_err(bad)?);
                }
                OptionalMetadataField::Signedness(bits) => signedness = bits.iter().map(|bit| *bit).collect(),
                OptionalMetadataField::EnumStrValue(list) => {
                    for labels in list.iter_values() {
                        enums.push(labels.map_err(bad)?.values().iter().map(|v| v.value().into_owned()).collect());
                    }
                }
                OptionalMetadataField::SetStrValue(list) => {
                    for labels in list.iter_values() {
                        sets.push(labels.map_err(bad)?.values().iter().map(|v| v.value().into_owned()).collect());
                    }
                }
                OptionalMetadataField::SimplePrimaryKey(keys) => {
                    let keys = keys.iter_indexes().map(|i| i.map(|i| i as usize));
                    primary_key = keys.collect::<Result<_, _>>().map_err(bad)?;
                }
                OptionalMetadataField::PrimaryKeyWithPrefix(keys) => {
                    let keys = keys.iter_keys().map(|k| k.map(|k| k.column_index() as usize));
                    primary_key = keys.collect::<Result<_, _>>().map_err(bad)?;
                }
                _ => {}
            }
        }
        let names = names.ok_or_else(|| {
            format!("{name}: the binlog carries no column names; set binlog_row_metadata=FULL on the server")
        })?;
        let (mut signedness, mut enums, mut sets) = (signedness.into_iter(), enums.into_iter(), sets.into_iter());
        let (mut unsigned, mut labels) = (Vec::with_capacity(names.len()), Vec::with_capacity(names.len()));
        for index in 0..names.len() {
            let kind = tme.get_column_type(index).ok().flatten();
            // Signedness has one bit per numeric column, YEAR included (as the server counts them).
            unsigned.push(kind.is_some_and(|k| k.is_numeric_type()) && signedness.next().unwrap_or(false));
            labels.push(match kind {
                Some(ColumnType::MYSQL_TYPE_ENUM) => enums.next(),
                Some(ColumnType::MYSQL_TYPE_SET) => sets.next(),
                _ => None,
            });
        }
        Ok(Self { name, names, unsigned, labels, primary_key, charsets: Vec::new(), from_catalogue: false })
    }
}

/// Everything needed to render one column's value.
struct Column<'a> {
    kind: ColumnType,
    meta: &'a [u8],
    unsigned: bool,
    charset: u16,
    labels: Option<&'a [String]>,
}

impl Column<'_> {
    fn render(&self, value: BinlogValue<'_>) -> Result<Json, String> {
        use ColumnType::*;
        let value = match value {
            BinlogValue::Value(value) => value,
            BinlogValue::Jsonb(jsonb) => {
                let dom = jsonb.parse().map_err(|e| format!("unreadable binary JSON: {e}"))?;
                return Ok(Json::String(Json::from(dom).to_string()));
            }
            BinlogValue::JsonDiff(_) => {
                return Err("partial JSON update; set binlog_row_value_options='' on the server".into());
            }
        };
        let fsp = self.meta.first().copied().unwrap_or(0);
        Ok(match (self.kind, value) {
            (_, Value::NULL) => Json::Null,
            (MYSQL_TYPE_TINY, v) => integer(v, 8, self.unsigned)?,
            (MYSQL_TYPE_SHORT, v) => integer(v, 16, self.unsigned)?,
            (MYSQL_TYPE_INT24, v) => integer(v, 24, self.unsigned)?,
            (MYSQL_TYPE_LONG, v) => integer(v, 32, self.unsigned)?,
            (MYSQL_TYPE_LONGLONG, v) => integer(v, 64, self.unsigned)?,
            (MYSQL_TYPE_FLOAT, Value::Float(f)) => single(f)?,
            (MYSQL_TYPE_DOUBLE, Value::Double(d)) => float(d)?,
            (MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL, Value::Bytes(b)) => Json::String(utf8(b)?),
            (MYSQL_TYPE_YEAR, Value::Bytes(b)) => Json::from(year(&utf8(b)?)?),
            (MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE, Value::Date(y, mo, d, ..)) => date(y, mo, d)?,
            (MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2, Value::Date(y, mo, d, h, mi, s, us)) => {
                datetime(wall_clock(y, mo, d, h, mi, s, us)?, self.kind == MYSQL_TYPE_DATETIME2 && fsp > 3)
            }
            (MYSQL_TYPE_TIMESTAMP, Value::Int(secs)) => timestamp(secs, 0, 0)?,
            (MYSQL_TYPE_TIMESTAMP2, Value::Bytes(b)) => {
                let text = utf8(b)?;
                let (secs, micros) = seconds_and_micros(&text).ok_or_else(|| format!("unexpected `{text}`"))?;
                timestamp(secs, micros, fsp)?
            }
            (MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2, Value::Time(negative, days, h, mi, s, us)) => {
                time(negative, days, h, mi, s, us)
            }
            (MYSQL_TYPE_ENUM, Value::Int(index)) => Json::String(enum_label(self.labels()?, index)?),
            (MYSQL_TYPE_SET, Value::Bytes(mask)) => Json::String(set_labels(self.labels()?, &mask)?),
            (MYSQL_TYPE_BIT, Value::Bytes(bits)) => bit(&bits, self.meta),
            (MYSQL_TYPE_GEOMETRY | MYSQL_TYPE_VECTOR, Value::Bytes(b)) => base64(b),
            (MYSQL_TYPE_STRING, Value::Bytes(b)) if self.charset == BINARY_CHARSET => base64(pad_binary(b, self.meta)),
            (
                MYSQL_TYPE_VARCHAR
                | MYSQL_TYPE_VAR_STRING
                | MYSQL_TYPE_BLOB
                | MYSQL_TYPE_TINY_BLOB
                | MYSQL_TYPE_MEDIUM_BLOB
                | MYSQL_TYPE_LONG_BLOB,
                Value::Bytes(b),
            ) if self.charset == BINARY_CHARSET => base64(b),
            (
                MYSQL_TYPE_STRING
                | MYSQL_TYPE_VARCHAR
                | MYSQL_TYPE_VAR_STRING
                | MYSQL_TYPE_BLOB
                | MYSQL_TYPE_TINY_BLOB
                | MYSQL_TYPE_MEDIUM_BLOB
                | MYSQL_TYPE_LONG_BLOB
                | MYSQL_TYPE_JSON,
                Value::Bytes(b),
            ) => Json::String(text(b, self.charset)?),
            (kind, value) => return Err(format!("unsupported value {value:?} for a {kind:?} column")),
        })
    }

    fn labels(&self) -> Result<&[String], String> {
        self.labels.ok_or_else(|| "the binlog carries no labels; set binlog_row_metadata=FULL on the server".into())
    }
}

/// Binlog integers are raw two's-complement bits of the column's width, and
/// mysql_common may have read them with the wrong signedness, so reinterpret.
fn integer(value: Value, width: u32, unsigned: bool) -> Result<Json, String> {
    let bits = match value {
        Value::Int(i) => i as u64,
        Value::UInt(u) => u,
        other => return Err(format!("expected an integer, got {other:?}")),
    };
    Ok(Json::Number(fixed_width(bits, width, unsigned)))
}

/// The number the low `width` bits of `bits` stand for, signed or not.
fn fixed_width(bits: u64, width: u32, unsigned: bool) -> Number {
    let shift = 64 - width.clamp(1, 64);
    if unsigned { Number::from((bits << shift) >> shift) } else { Number::from(((bits << shift) as i64) >> shift) }
}

/// mysql_common reports YEAR as text `1900 + stored byte`; 1900 is the zero year `0000`.
fn year(text: &str) -> Result<i64, String> {
    let year: i64 = text.parse().map_err(|_| format!("unexpected YEAR `{text}`"))?;
    Ok(if year == 1900 { 0 } else { year })
}

/// Splits mysql_common's TIMESTAMP2 text, `secs` or `secs.micros6`.
fn seconds_and_micros(text: &str) -> Option<(i64, u32)> {
    let (secs, micros) = text.split_once('.').unwrap_or((text, "0"));
    let secs: i64 = secs.parse().ok()?;
    // The server stores unsigned seconds; mysql_common reads them as i32, so undo the wrap.
    let micros: u32 = micros.parse().ok().filter(|&m| m < 1_000_000)?;
    Some((if secs < 0 { secs + (1 << 32) } else { secs }, micros))
}

/// ENUM arrives as its 1-based index; 0 is the empty string MySQL stores for invalid input.
fn enum_label(labels: &[String], index: i64) -> Result<String, String> {
    match index {
        0 => Ok(String::new()),
        i => usize::try_from(i - 1)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .ok_or_else(|| format!("ENUM index {index} but only {} labels", labels.len())),
    }
}

/// SET arrives as a little-endian bitmask, bit `i` standing for label `i`.
fn set_labels(labels: &[String], mask: &[u8]) -> Result<String, String> {
    let mut chosen = Vec::new();
    for (i, byte) in mask.iter().enumerate() {
        for bit in (0..8).filter(|bit| byte & (1 << bit) != 0) {
            let label = labels
                .get(i * 8 + bit)
                .ok_or_else(|| format!("SET bit {} but only {} labels", i * 8 + bit, labels.len()))?;
            chosen.push(label.as_str());
        }
    }
    Ok(chosen.join(","))
}

/// A BIT value; the table map gives its width as `[bits % 8, bytes]`.
fn bit(big_endian: &[u8], meta: &[u8]) -> Json {
    let width = usize::from(meta.get(1).copied().unwrap_or(0)) * 8 + usize::from(meta.first().copied().unwrap_or(0));
    bits(big_endian, width)
}

/// The binlog drops BINARY(n)'s trailing zero bytes; Debezium pads them back.
fn pad_binary(mut bytes: Vec<u8>, meta: &[u8]) -> Vec<u8> {
    if let [real_type, low] = *meta {
        // For long CHAR/BINARY the table map folds two high length bits into the real-type byte.
        let length = usize::from(low) | ((usize::from(real_type) & 0x30) ^ 0x30) << 4;
        if bytes.len() < length {
            bytes.resize(length, 0);
        }
    }
    bytes
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
