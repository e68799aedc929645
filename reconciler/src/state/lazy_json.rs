//! A JSON value read from the state database and turned into a tree only when first used.
//!
//! Planning an unchanged resource compares spec hashes and never looks at the recorded spec,
//! so building 10,000 `Value` trees up front was most of the cost of reading state. The text
//! is still checked to be JSON when the row is read, so a corrupt row fails there, by name.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub struct LazyJson {
    /// Checked JSON text, when the value came from the database.
    text: Option<Box<str>>,
    value: OnceLock<Value>,
}

impl LazyJson {
    /// Checks that `text` is JSON without building a tree.
    pub fn parse(text: String) -> Result<LazyJson, serde_json::Error> {
        serde_json::from_str::<IgnoredAny>(&text)?;
        Ok(LazyJson {
            text: Some(text.into_boxed_str()),
            value: OnceLock::new(),
        })
    }

    /// The value as compact JSON text (the stored text when there is one).
    pub fn to_json_string(&self) -> String {
        match (&self.text, self.value.get()) {
            (Some(t), None) => t.to_string(),
            _ => self.deref().to_string(),
        }
    }
}

impl Deref for LazyJson {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value.get_or_init(|| {
            // `parse` checked the text, so this cannot fail; `Null` keeps it total.
            self.text
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null)
        })
    }
}

impl From<Value> for LazyJson {
    fn from(v: Value) -> LazyJson {
        LazyJson {
            text: None,
            value: OnceLock::from(v),
        }
    }
}

impl Clone for LazyJson {
    fn clone(&self) -> LazyJson {
        match (&self.text, self.value.get()) {
            (Some(t), None) => LazyJson {
                text: Some(t.clone()),
                value: OnceLock::new(),
            },
            _ => LazyJson::from(self.deref().clone()),
        }
    }
}

impl PartialEq for LazyJson {
    fn eq(&self, other: &LazyJson) -> bool {
        **self == **other
    }
}

impl fmt::Debug for LazyJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for LazyJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LazyJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LazyJson, D::Error> {
        Value::deserialize(d).map(LazyJson::from)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parsed_text_reads_as_the_value() {
        let l = LazyJson::parse(r#"{"a":[1,2],"b":{"c":true}}"#.to_string()).unwrap();
        assert_eq!(*l, serde_json::json!({"a": [1, 2], "b": {"c": true}}));
        assert_eq!(l.to_json_string(), r#"{"a":[1,2],"b":{"c":true}}"#);
    }

    #[test]
    fn text_that_is_not_json_is_refused_when_read() {
        let e = LazyJson::parse("{\"a\": ".to_string()).err().unwrap();
        assert_eq!(
            e.to_string(),
            "EOF while parsing a value at line 1 column 6"
        );
        assert!(LazyJson::parse("{} x".to_string()).is_err());
    }

    #[test]
    fn unparsed_and_built_values_compare_and_clone_alike() {
        let a = LazyJson::parse(r#"{"x":1}"#.to_string()).unwrap();
        let b = LazyJson::from(serde_json::json!({"x": 1}));
        let c = a.clone();
        assert_eq!(a, b);
        assert_eq!(c, b);
        assert_eq!(b.to_json_string(), r#"{"x":1}"#);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}
