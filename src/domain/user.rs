//! Users of the API.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_superuser: bool,
    pub is_active: bool,
}

/// A user name: 1 to 150 characters of letters, digits and `@.+-_` (Django's rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.chars().count() <= 150
            && raw
                .chars()
                .all(|c| c.is_alphanumeric() || "@.+-_".contains(c));
        if ok {
            Ok(Username(raw.to_owned()))
        } else {
            Err("a user name is 1 to 150 letters, digits or @.+-_".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
