//! A showback report: usage detail (per day, subscription, model and key)
//! filtered, summed into the groups asked for, and priced.
//!
//! Invariants: every detail row that passes the filter lands in exactly one
//! group, and the report's total is the sum of its groups. Cost is counted
//! only for priced models; a group's tokens on unpriced models are reported
//! beside its cost (`unpriced_tokens`), and a group with no priced usage at
//! all has no cost (not a cost of zero).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::price::{Cost, Price};
use super::Usage;
use crate::store::UsageDetail;

/// What usage can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    /// The UTC day, `YYYY-MM-DD`.
    Day,
    Subscription,
    Model,
    Key,
    Owner,
    CostCenter,
}

impl Dimension {
    const ALL: [Dimension; 6] = [
        Dimension::Day,
        Dimension::Subscription,
        Dimension::Model,
        Dimension::Key,
        Dimension::Owner,
        Dimension::CostCenter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Subscription => "subscription",
            Dimension::Model => "model",
            Dimension::Key => "key",
            Dimension::Owner => "owner",
            Dimension::CostCenter => "cost_center",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The dimensions of a report, in the order asked for; never empty and
/// without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping(Vec<Dimension>);

impl Default for Grouping {
    /// Per subscription and model: the usage API's original shape.
    fn default() -> Self {
        Grouping(vec![Dimension::Subscription, Dimension::Model])
    }
}

impl FromStr for Grouping {
    type Err = String;

    /// A comma-separated list, e.g. `day,subscription`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut dims = Vec::new();
        for word in text.split(',').map(str::trim) {
            let dim = Dimension::ALL
                .into_iter()
                .find(|d| d.as_str() == word)
                .ok_or_else(|| {
                    let names: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
                    format!("{word:?} is not one of {}", names.join(", "))
                })?;
            if dims.contains(&dim) {
                return Err(format!("{word:?} is listed twice"));
            }
            dims.push(dim);
        }
        Ok(Grouping(dims))
    }
}

impl Grouping {
    pub fn dimensions(&self) -> &[Dimension] {
        &self.0
    }

    fn has(&self, d: Dimension) -> bool {
        self.0.contains(&d)
    }
}

/// Which detail rows a report counts; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub subscription: Option<String>,
    pub model: Option<String>,
    pub key: Option<String>,
    pub owner: Option<String>,
}

impl Filter {
    fn admits(&self, row: &UsageDetail) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.subscription, &row.subscription)
            && ok(&self.model, &row.model)
            && ok(&self.key, &row.key)
            && ok(&self.owner, &row.owner)
    }
}

/// What the report needs to know beyond the usage.
pub struct Catalog<'a> {
    /// By model.
    pub prices: &'a BTreeMap<String, Price>,
    /// By subscription; absent for subscriptions without one.
    pub cost_centers: &'a BTreeMap<String, String>,
}

/// Usage and cost of one group (or of the whole report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub usage: Usage,
    /// Of the priced part of `usage`; `None` if no part was priced.
    pub cost: Option<Cost>,
    /// Prompt and completion tokens on models without a price.
    pub unpriced_tokens: u64,
}

impl Tally {
    fn add(&mut self, usage: &Usage, price: Option<&Price>) {
        self.usage += *usage;
        match price {
            Some(p) => *self.cost.get_or_insert_with(Cost::default) += Cost::of(usage, p),
            None => self.unpriced_tokens += usage.prompt_tokens + usage.completion_tokens,
        }
    }

    /// The counters and cost as the API serves them.
    fn json_into(&self, out: &mut Map<String, Value>) {
        let u = &self.usage;
        out.insert("requests".into(), json!(u.requests));
        out.insert("prompt_tokens".into(), json!(u.prompt_tokens));
        out.insert("completion_tokens".into(), json!(u.completion_tokens));
        out.insert(
            "total_tokens".into(),
            json!(u.prompt_tokens + u.completion_tokens),
        );
        out.insert("cost".into(), json!(self.cost.map(Cost::decimal)));
        out.insert("unpriced_tokens".into(), json!(self.unpriced_tokens));
    }
}

/// One group: its values of the grouping's dimensions, in order (empty
/// string: none, e.g. the key of a token holder), and its tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub values: Vec<String>,
    pub tally: Tally,
    /// The price used, when the group is of one model that has one.
    pub price: Option<Price>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub grouping: Grouping,
    /// Ordered by the grouping's values.
    pub groups: Vec<Group>,
    pub total: Tally,
    /// The prices' currency; `None` when nothing is priced.
    pub currency: Option<String>,
}

/// The report of `detail` per `grouping`, counting what `filter` admits.
pub fn build(
    detail: &[UsageDetail],
    grouping: &Grouping,
    filter: &Filter,
    catalog: &Catalog<'_>,
) -> Report {
    let mut groups: BTreeMap<Vec<String>, Tally> = BTreeMap::new();
    let mut total = Tally::default();
    for row in detail.iter().filter(|r| filter.admits(r)) {
        let values = grouping
            .dimensions()
            .iter()
            .map(|d| value_of(row, *d, catalog))
            .collect();
        let price = catalog.prices.get(&row.model);
        groups.entry(values).or_default().add(&row.usage, price);
        total.add(&row.usage, price);
    }
    let model_at = grouping
        .dimensions()
        .iter()
        .position(|d| *d == Dimension::Model);
    let groups = groups
        .into_iter()
        .map(|(values, tally)| Group {
            price: model_at.and_then(|i| catalog.prices.get(&values[i]).cloned()),
            values,
            tally,
        })
        .collect();
    Report {
        grouping: grouping.clone(),
        groups,
        total,
        currency: catalog.prices.values().next().map(|p| p.currency.clone()),
    }
}

fn value_of(row: &UsageDetail, d: Dimension, catalog: &Catalog<'_>) -> String {
    match d {
        Dimension::Day => crate::time::utc_date(row.day),
        Dimension::Subscription => row.subscription.clone(),
        Dimension::Model => row.model.clone(),
        Dimension::Key => row.key.clone(),
        Dimension::Owner => row.owner.clone(),
        Dimension::CostCenter => catalog
            .cost_centers
            .get(&row.subscription)
            .cloned()
            .unwrap_or_default(),
    }
}

impl Report {
    /// One JSON object per group: its dimensions (an empty value as `null`),
    /// the counters, `cost`, `unpriced_tokens`, and with a model dimension
    /// the `price` used.
    pub fn rows_json(&self) -> Vec<Value> {
        self.groups
            .iter()
            .map(|g| {
                let mut row = Map::new();
                for (d, v) in self.grouping.dimensions().iter().zip(&g.values) {
                    let v = if v.is_empty() { Value::Null } else { json!(v) };
                    row.insert(d.as_str().into(), v);
                }
                g.tally.json_into(&mut row);
                if self.grouping.has(Dimension::Model) {
                    row.insert("price".into(), json!(g.price.as_ref().map(Price::json)));
                }
                Value::Object(row)
            })
            .collect()
    }

    pub fn total_json(&self) -> Value {
        let mut row = Map::new();
        self.total.json_into(&mut row);
        Value::Object(row)
    }

    /// The CSV columns: the dimensions, the counters, cost and currency,
    /// and with a model dimension the prices used.
    pub fn csv(&self) -> String {
        let mut header: Vec<&str> = self
            .grouping
            .dimensions()
            .iter()
            .map(|d| d.as_str())
            .collect();
        header.extend([
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cost",
            "currency",
            "unpriced_tokens",
        ]);
        let priced = self.grouping.has(Dimension::Model);
        if priced {
            header.extend(["prompt_price_per_million", "completion_price_per_million"]);
        }
        let mut out = super::csv::record(&header);
        for g in &self.groups {
            let u = &g.tally.usage;
            let mut cells: Vec<String> = g.values.clone();
            cells.extend([
                u.requests.to_string(),
                u.prompt_tokens.to_string(),
                u.completion_tokens.to_string(),
                (u.prompt_tokens + u.completion_tokens).to_string(),
                g.tally.cost.map(Cost::decimal).unwrap_or_default(),
                g.tally.cost.and(self.currency.clone()).unwrap_or_default(),
                g.tally.unpriced_tokens.to_string(),
            ]);
            if priced {
                cells.push(
                    g.price
                        .as_ref()
                        .map(|p| p.prompt.decimal())
                        .unwrap_or_default(),
                );
                cells.push(
                    g.price
                        .as_ref()
                        .map(|p| p.completion.decimal())
                        .unwrap_or_default(),
                );
            }
            out.push_str(&super::csv::record(&cells));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::showback::price::Micros;

    fn detail(
        day: i64,
        sub: &str,
        model: &str,
        key: &str,
        owner: &str,
        p: u64,
        c: u64,
    ) -> UsageDetail {
        UsageDetail {
            day: day * 86_400,
            subscription: sub.into(),
            model: model.into(),
            key: key.into(),
            owner: owner.into(),
            usage: Usage {
                requests: 1,
                prompt_tokens: p,
                completion_tokens: c,
            },
        }
    }

    fn fixture() -> (
        Vec<UsageDetail>,
        BTreeMap<String, Price>,
        BTreeMap<String, String>,
    ) {
        let rows = vec![
            detail(20_000, "team-a", "paid", "k1", "alice", 1_000_000, 0),
            detail(20_000, "team-a", "free", "k1", "alice", 500, 500),
            detail(20_001, "team-a", "paid", "k2", "bob", 0, 1_000_000),
            detail(20_001, "team-b", "paid", "", "", 2_000_000, 0),
            detail(20_001, "team-b", "free", "k3", "carol", 10, 0),
        ];
        let prices = BTreeMap::from([(
            "paid".to_string(),
            Price {
                model: "paid".into(),
                currency: "USD".into(),
                prompt: Micros(1_000_000),
                completion: Micros(3_000_000),
            },
        )]);
        let centers = BTreeMap::from([("team-a".to_string(), "CC-1".to_string())]);
        (rows, prices, centers)
    }

    fn grouped(by: &str, filter: &Filter) -> Report {
        let (rows, prices, centers) = fixture();
        let catalog = Catalog {
            prices: &prices,
            cost_centers: &centers,
        };
        build(&rows, &by.parse().unwrap(), filter, &catalog)
    }

    fn summary(r: &Report) -> Vec<(Vec<String>, u64, Option<String>, u64)> {
        r.groups
            .iter()
            .map(|g| {
                (
                    g.values.clone(),
                    g.tally.usage.prompt_tokens + g.tally.usage.completion_tokens,
                    g.tally.cost.map(Cost::decimal),
                    g.tally.unpriced_tokens,
                )
            })
            .collect()
    }

    fn v(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn groups_sum_and_price_the_detail_they_hold() {
        let none = Filter::default();
        let by_model = grouped("subscription,model", &none);
        assert_eq!(
            summary(&by_model),
            [
                (v(&["team-a", "free"]), 1000, None, 1000),
                (
                    v(&["team-a", "paid"]),
                    2_000_000,
                    Some("4.000000".into()),
                    0
                ),
                (v(&["team-b", "free"]), 10, None, 10),
                (
                    v(&["team-b", "paid"]),
                    2_000_000,
                    Some("2.000000".into()),
                    0
                ),
            ]
        );
        assert_eq!(
            by_model.groups[1].price.as_ref().map(|p| p.prompt),
            Some(Micros(1_000_000))
        );
        assert_eq!(
            by_model.total.cost.map(Cost::decimal).as_deref(),
            Some("6.000000")
        );
        assert_eq!(by_model.total.unpriced_tokens, 1010);
        assert_eq!(by_model.currency.as_deref(), Some("USD"));

        assert_eq!(
            summary(&grouped("day", &none)),
            [
                (v(&["2024-10-04"]), 1_001_000, Some("1.000000".into()), 1000),
                (v(&["2024-10-05"]), 3_000_010, Some("5.000000".into()), 10),
            ]
        );
        assert_eq!(
            summary(&grouped("owner", &none)),
            [
                (v(&[""]), 2_000_000, Some("2.000000".into()), 0),
                (v(&["alice"]), 1_001_000, Some("1.000000".into()), 1000),
                (v(&["bob"]), 1_000_000, Some("3.000000".into()), 0),
                (v(&["carol"]), 10, None, 10),
            ]
        );
        assert_eq!(
            summary(&grouped("cost_center", &none)),
            [
                (v(&[""]), 2_000_010, Some("2.000000".into()), 10),
                (v(&["CC-1"]), 2_001_000, Some("4.000000".into()), 1000),
            ]
        );
    }

    #[test]
    fn filters_narrow_before_grouping() {
        let only_a = Filter {
            subscription: Some("team-a".into()),
            ..Filter::default()
        };
        let by_key = grouped("key,owner", &only_a);
        assert_eq!(
            summary(&by_key),
            [
                (
                    v(&["k1", "alice"]),
                    1_001_000,
                    Some("1.000000".into()),
                    1000
                ),
                (v(&["k2", "bob"]), 1_000_000, Some("3.000000".into()), 0),
            ]
        );
        let bob = Filter {
            owner: Some("bob".into()),
            model: Some("paid".into()),
            ..Filter::default()
        };
        assert_eq!(
            grouped("day", &bob).total.usage.completion_tokens,
            1_000_000
        );
        let nobody = Filter {
            key: Some("k9".into()),
            ..Filter::default()
        };
        let empty = grouped("subscription,model", &nobody);
        assert!(empty.groups.is_empty());
        assert_eq!(empty.total.cost, None);
    }

    #[test]
    fn groupings_are_parsed_strictly() {
        assert_eq!(
            "day, subscription"
                .parse::<Grouping>()
                .unwrap()
                .dimensions(),
            [Dimension::Day, Dimension::Subscription]
        );
        assert!("day,day".parse::<Grouping>().unwrap_err().contains("twice"));
        assert!("team"
            .parse::<Grouping>()
            .unwrap_err()
            .contains("not one of day"));
        assert!("".parse::<Grouping>().is_err());
    }

    #[test]
    fn json_rows_keep_the_original_shape_and_add_cost() {
        let r = grouped("subscription,model", &Filter::default());
        let rows = r.rows_json();
        assert_eq!(rows[1]["subscription"], "team-a");
        assert_eq!(rows[1]["model"], "paid");
        assert_eq!(rows[1]["total_tokens"], 2_000_000);
        assert_eq!(rows[1]["cost"], "4.000000");
        assert_eq!(rows[1]["price"]["completion_per_million"], "3");
        assert_eq!(rows[0]["cost"], Value::Null);
        assert_eq!(rows[0]["price"], Value::Null);
        let by_key = grouped("key", &Filter::default()).rows_json();
        assert_eq!(by_key[0]["key"], Value::Null, "a token holder has no key");
        assert!(by_key[0].get("price").is_none());
    }

    #[test]
    fn csv_has_a_header_and_one_record_per_group() {
        let csv = grouped("owner,model", &Filter::default()).csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "owner,model,requests,prompt_tokens,completion_tokens,total_tokens,cost,currency,unpriced_tokens,prompt_price_per_million,completion_price_per_million"
        );
        assert_eq!(lines[1], ",paid,1,2000000,0,2000000,2.000000,USD,0,1,3");
        assert_eq!(lines[2], "alice,free,1,500,500,1000,,,1000,,");
        assert_eq!(lines.len(), 6);
        assert!(csv.ends_with("\r\n"));
    }
}
