//! The price book: what a model's tokens cost, from the book shipped in the repository
//! (`prices.toml`, with the date its prices are from) and the config's `[prices."model"]`,
//! which override or extend it.
//!
//! A model the book does not know has no price: its cost is `None`, never 0, so an unpriced
//! model cannot pass for a free one.

use std::collections::HashMap;

use serde::Deserialize;

/// The book shipped in the repository.
const SHIPPED: &str = include_str!("../prices.toml");

/// One model's prices, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Uncached input tokens.
    pub input: f64,
    pub output: f64,
    /// Input tokens read from the provider's prompt cache; `input` when not set.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Input tokens written to the prompt cache (Anthropic); `input` when not set.
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Reasoning tokens (a part of the output); `output` when not set.
    #[serde(default)]
    pub reasoning: Option<f64>,
}

/// Token counts to price, in OpenAI's convention: `input` includes the cache reads and writes,
/// `output` includes the reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl ModelPrice {
    pub fn cost_usd(&self, t: &Tokens) -> f64 {
        let cache_read = t.cache_read.min(t.input);
        let cache_write = t.cache_write.min(t.input - cache_read);
        let fresh = t.input - cache_read - cache_write;
        let reasoning = t.reasoning.min(t.output);
        let per_million = fresh as f64 * self.input
            + cache_read as f64 * self.cached_input.unwrap_or(self.input)
            + cache_write as f64 * self.cache_write.unwrap_or(self.input)
            + (t.output - reasoning) as f64 * self.output
            + reasoning as f64 * self.reasoning.unwrap_or(self.output);
        per_million / 1_000_000.0
    }

    fn validate(&self) -> Result<(), String> {
        let all = [
            Some(self.input),
            Some(self.output),
            self.cached_input,
            self.cache_write,
            self.reasoning,
        ];
        if all
            .into_iter()
            .flatten()
            .any(|p| !p.is_finite() || !(0.0..=1_000_000.0).contains(&p))
        {
            return Err("prices must be dollars per million tokens, from 0 to 1000000".into());
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shipped {
    as_of: String,
    models: HashMap<String, ModelPrice>,
}

/// The shipped book with the config's prices on top.
#[derive(Debug, Clone)]
pub struct PriceBook {
    models: HashMap<String, ModelPrice>,
    /// The date of the shipped prices.
    pub as_of: String,
}

impl PriceBook {
    /// The shipped book alone.
    pub fn shipped() -> PriceBook {
        // The shipped file is part of the source and parsed by a test; a broken one fails CI.
        let shipped: Shipped = match toml::from_str(SHIPPED) {
            Ok(s) => s,
            Err(_) => Shipped {
                as_of: String::new(),
                models: HashMap::new(),
            },
        };
        PriceBook {
            models: shipped.models,
            as_of: shipped.as_of,
        }
    }

    /// The shipped book with `overrides` (the config's `[prices]`) replacing or adding models.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a String, &'a ModelPrice)>,
    ) -> PriceBook {
        let mut book = PriceBook::shipped();
        for (model, price) in overrides {
            book.models.insert(model.clone(), *price);
        }
        book
    }

    /// The price of `model`: its own, or that of its undated name when it ends in a date
    /// (`-2024-08-06`, `-20250929`) or `-latest`. A model of another variant (say
    /// `gpt-4o-audio-preview`) is not given `gpt-4o`'s price: it is unpriced until configured.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        let base = strip_version(model)?;
        self.models.get(base)
    }

    /// `model`'s cost for `tokens`, or `None` when the model has no price.
    pub fn cost_usd(&self, model: &str, tokens: &Tokens) -> Option<f64> {
        self.price(model).map(|p| p.cost_usd(tokens))
    }
}

/// Validates the config's `[prices]`, naming the key at fault.
pub fn validate(
    origin: &str,
    prices: &std::collections::BTreeMap<String, ModelPrice>,
) -> Result<(), crate::config::ConfigError> {
    for (model, price) in prices {
        if model.is_empty() || model.len() > 256 {
            return Err(crate::config::ConfigError(format!(
                "{origin}: prices: a model name must be 1-256 characters"
            )));
        }
        price.validate().map_err(|reason| {
            crate::config::ConfigError(format!("{origin}: prices.{model:?}: {reason}"))
        })?;
    }
    Ok(())
}

fn strip_version(model: &str) -> Option<&str> {
    if let Some(base) = model.strip_suffix("-latest") {
        return Some(base);
    }
    let b = model.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    // -YYYYMMDD
    if b.len() > 9 && b[b.len() - 9] == b'-' && digits(&b[b.len() - 8..]) {
        return Some(&model[..b.len() - 9]);
    }
    // -YYYY-MM-DD
    if b.len() > 11 {
        let tail = &b[b.len() - 11..];
        if tail[0] == b'-'
            && digits(&tail[1..5])
            && tail[5] == b'-'
            && digits(&tail[6..8])
            && tail[8] == b'-'
            && digits(&tail[9..11])
        {
            return Some(&model[..b.len() - 11]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_book_parses_and_is_dated() {
        let shipped: Shipped = toml::from_str(SHIPPED).unwrap();
        assert!(shipped.models.len() >= 20);
        assert_eq!(shipped.as_of.len(), 10, "as_of is a date");
        for (m, p) in &shipped.models {
            p.validate().unwrap_or_else(|e| panic!("{m}: {e}"));
        }
    }

    #[test]
    fn dated_names_take_the_undated_price_and_variants_do_not() {
        let book = PriceBook::shipped();
        assert_eq!(book.price("gpt-4o-2024-08-06"), book.price("gpt-4o"));
        assert!(book.price("gpt-4o").is_some());
        assert_eq!(
            book.price("claude-sonnet-4-5-20250929"),
            book.price("claude-sonnet-4-5")
        );
        assert_ne!(
            book.price("claude-sonnet-4-5-20250929").map(|p| p.input),
            book.price("claude-opus-4-1").map(|p| p.input)
        );
        assert!(book.price("gpt-4o-audio-preview").is_none());
        assert!(book.cost_usd("my-own-model", &Tokens::default()).is_none());
    }

    #[test]
    fn cost_splits_cached_and_reasoning_tokens() {
        let p = ModelPrice {
            input: 2.0,
            output: 8.0,
            cached_input: Some(0.5),
            cache_write: Some(2.5),
            reasoning: None,
        };
        let t = Tokens {
            input: 1_000_000,
            output: 500_000,
            cache_read: 400_000,
            cache_write: 100_000,
            reasoning: 200_000,
        };
        // 0.5M fresh × 2 + 0.4M × 0.5 + 0.1M × 2.5 + 0.5M × 8
        let want = 1.0 + 0.2 + 0.25 + 4.0;
        assert!((p.cost_usd(&t) - want).abs() < 1e-9);
    }

    #[test]
    fn overrides_replace_and_extend() {
        let mine = ModelPrice {
            input: 1.0,
            output: 1.0,
            cached_input: None,
            cache_write: None,
            reasoning: None,
        };
        let overrides = [
            ("gpt-4o".to_string(), mine),
            ("local-llama".to_string(), mine),
        ];
        let book = PriceBook::with_overrides(overrides.iter().map(|(k, v)| (k, v)));
        assert_eq!(book.price("gpt-4o-2024-08-06"), Some(&mine));
        assert_eq!(book.price("local-llama"), Some(&mine));
    }
}
