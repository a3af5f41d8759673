//! `plugins/shop-product` in plain Rust: `<prefix>:<id>` = hash of a product
//! (name, category, price, stock); a category change fans out to its products.

use std::collections::HashMap;

use evercache::contract::{CacheValue, DbValue, Entry, Outcome};
use evercache::event::ChangeEvent;
use evercache::plugin::{CallError, NativeContext, NativeFactory, NativePlugin};
use evercache::query::QueryRunner;
use futures::future::BoxFuture;

use super::{Settings, failed, id_of, ids_of, text};

const NAME: &str = "native_shop_product";

#[derive(Clone)]
struct NativeShopProduct {
    key_prefix: String,
    products_in_category: String,
    products: String,
    database: QueryRunner,
}

/// The factory registered as plugin "native_shop_product".
pub fn factory() -> NativeFactory {
    std::sync::Arc::new(|context: NativeContext| {
        let Settings { schema, key_prefix, database } = Settings::from(context)?;
        Ok(Box::new(NativeShopProduct {
            key_prefix,
            products_in_category: format!("select id from {schema}.product where category_id = $1"),
            products: format!(
                "select p.id, p.name, c.name as category, p.price, p.stock
                 from {schema}.product p join {schema}.category c on c.id = p.category_id
                 where p.id = any($1)"
            ),
            database,
        }) as Box<dyn NativePlugin>)
    })
}

impl NativePlugin for NativeShopProduct {
    fn label(&self) -> String {
        format!("{NAME}@0")
    }

    fn planner(&self) -> Option<Box<dyn NativePlugin>> {
        Some(Box::new(self.clone()))
    }

    fn keys<'a>(&'a mut self, event: &'a ChangeEvent) -> BoxFuture<'a, Result<Vec<String>, CallError>> {
        Box::pin(async move {
            let id = id_of(event).ok_or_else(|| failed(NAME, "keys", "event without id".to_owned()))?;
            let ids = match event.table.as_str() {
                "product" => vec![id],
                "category" => {
                    let rows = self
                        .database
                        .query(&self.products_in_category, &[DbValue::Int(id)])
                        .await
                        .map_err(|e| failed(NAME, "keys", e.to_string()))?;
                    rows.values
                        .iter()
                        .filter_map(|row| match row.first() {
                            Some(DbValue::Int(id)) => Some(*id),
                            _ => None,
                        })
                        .collect()
                }
                other => return Err(failed(NAME, "keys", format!("unexpected table {other}"))),
            };
            Ok(ids.into_iter().map(|id| format!("{}:{id}", self.key_prefix)).collect())
        })
    }

    fn recompute<'a>(&'a mut self, keys: &'a [String]) -> BoxFuture<'a, Result<Vec<Outcome>, CallError>> {
        Box::pin(async move {
            let ids = ids_of(keys).ok_or_else(|| failed(NAME, "recompute", "not a product key".to_owned()))?;
            let rows = self
                .database
                .query(&self.products, &[DbValue::IntList(ids.clone())])
                .await
                .map_err(|e| failed(NAME, "recompute", e.to_string()))?;
            let mut found = HashMap::with_capacity(rows.values.len());
            for row in rows.values {
                if let [DbValue::Int(id), name, category, price, DbValue::Int(stock)] = row.as_slice() {
                    let fields = vec![
                        ("name".to_owned(), text(name).unwrap_or_default().to_owned()),
                        ("category".to_owned(), text(category).unwrap_or_default().to_owned()),
                        ("price".to_owned(), text(price).unwrap_or_default().to_owned()),
                        ("stock".to_owned(), stock.to_string()),
                    ];
                    found.insert(*id, Outcome::Put(CacheValue { entry: Entry::Hash(fields), ttl_seconds: None }));
                }
            }
            Ok(ids.iter().map(|id| found.remove(id).unwrap_or(Outcome::Delete)).collect())
        })
    }
}
