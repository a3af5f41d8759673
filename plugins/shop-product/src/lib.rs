//! The shop's product cache: `product:{id}` as a Redis hash with name, category,
//! price and stock. A category change fans out to every product in it.

use std::collections::HashMap;

use evercache_plugin_sdk::{Config, Event, Outcome, Plugin, PluginError, export_plugin, query};

struct ShopProduct {
    key_prefix: String,
    products_in_category: String,
    products: String,
}

impl Plugin for ShopProduct {
    fn init(config: &Config) -> Result<Self, PluginError> {
        let schema = config.identifier("schema", "public")?;
        Ok(Self {
            key_prefix: config.get_or("key_prefix", "product").to_owned(),
            products_in_category: format!("select id from {schema}.product where category_id = $1"),
            products: format!(
                "select p.id, p.name, c.name as category, p.price, p.stock
                 from {schema}.product p join {schema}.category c on c.id = p.category_id
                 where p.id = any($1)"
            ),
        })
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, PluginError> {
        let ids: Vec<i64> = match event.table() {
            "product" => vec![event.row_field("id")?],
            // A rename (or delete) of a category changes every product in it.
            "category" => {
                let category: i64 = event.row_field("id")?;
                let rows = query!(&self.products_in_category, category)?;
                rows.iter().map(|row| row.get("id")).collect::<Result<_, _>>()?
            }
            other => return Err(PluginError::bad_event(format!("unexpected table {other}"))),
        };
        Ok(ids.into_iter().map(|id| format!("{}:{id}", self.key_prefix)).collect())
    }

    fn recompute(&self, keys: &[String]) -> Result<Vec<Outcome>, PluginError> {
        let ids = keys
            .iter()
            .map(|k| {
                k.rsplit(':')
                    .next()
                    .and_then(|id| id.parse::<i64>().ok())
                    .ok_or_else(|| PluginError::bad_event(format!("not a product key: {k}")))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let mut products = HashMap::new();
        for row in query!(&self.products, ids)?.iter() {
            let fields = [
                ("name", row.get::<String>("name")?),
                ("category", row.get::<String>("category")?),
                ("price", row.get::<String>("price")?),
                ("stock", row.get::<i64>("stock")?.to_string()),
            ];
            products.insert(row.get::<i64>("id")?, Outcome::hash(fields));
        }
        Ok(ids.iter().map(|id| products.remove(id).unwrap_or_else(Outcome::delete)).collect())
    }
}

export_plugin!(ShopProduct);
