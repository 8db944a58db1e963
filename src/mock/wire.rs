//! The EC2 Query protocol on the wire: form-encoded request parameters in, XML out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::ApiError;

/// EC2's XML namespace for API version 2016-11-15.
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// The parameters of one request (`Action=…&Version=…&…`).
#[derive(Debug, Default, Clone)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses a form-encoded body (or query string).
    pub fn parse(body: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// From pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// A parameter, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::client(
                "MissingParameter",
                format!("The request must contain the parameter {name}"),
            )
        })
    }

    /// An integer parameter, if present.
    pub fn int(&self, name: &str) -> Result<Option<u32>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    ApiError::client(
                        "InvalidParameterValue",
                        format!("Value ({v}) for parameter {name} is invalid. Expected a non-negative integer."),
                    )
                })
            })
            .transpose()
    }

    /// A boolean parameter, if present.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::client(
                    "InvalidParameterValue",
                    format!("Value ({v}) for parameter {name} is invalid. Expected true or false."),
                )),
            })
            .transpose()
    }

    /// An IPv4 address parameter.
    pub fn ip(name: &str, v: &str) -> Result<Ipv4Addr, ApiError> {
        v.parse().map_err(|_| {
            ApiError::client(
                "InvalidParameterValue",
                format!("Value ({v}) for parameter {name} is invalid. Expected an IPv4 address."),
            )
        })
    }

    /// The values of a flattened list `Name.1`, `Name.2`, … (in index order).
    pub fn list(&self, name: &str) -> Vec<String> {
        let mut v: Vec<(u32, String)> = self
            .0
            .iter()
            .filter_map(|(k, val)| {
                let idx = k.strip_prefix(name)?.strip_prefix('.')?;
                idx.parse::<u32>().ok().map(|i| (i, val.clone()))
            })
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Indexes N with keys `Name.N.…`, in order, with the sub-parameters for each.
    pub fn indexed(&self, name: &str) -> Vec<(u32, Params)> {
        let mut groups: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let Some((idx, sub)) = rest.split_once('.') else {
                continue;
            };
            if let Ok(i) = idx.parse::<u32>() {
                groups
                    .entry(i)
                    .or_default()
                    .insert(sub.to_owned(), v.clone());
            }
        }
        groups.into_iter().map(|(i, m)| (i, Params(m))).collect()
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    pub fn filters(&self) -> Result<Vec<Filter>, ApiError> {
        self.indexed("Filter")
            .into_iter()
            .map(|(_, p)| {
                let name = p.required("Name")?.to_owned();
                Ok(Filter {
                    name,
                    values: p.list("Value"),
                })
            })
            .collect()
    }

    /// `TagSpecification.N.Tag.M.Key/Value` for `resource_type`, and `Tag.N.Key/Value`.
    pub fn tag_specs(&self, resource_type: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let mut tags = BTreeMap::new();
        for (_, spec) in self.indexed("TagSpecification") {
            let rt = spec.get("ResourceType").unwrap_or(resource_type);
            if rt != resource_type {
                return Err(ApiError::client(
                    "InvalidParameterValue",
                    format!("'{rt}' is not a valid taggable resource type for this operation."),
                ));
            }
            tags.extend(spec.tags()?);
        }
        Ok(tags)
    }

    /// `Tag.N.Key` / `Tag.N.Value`.
    pub fn tags(&self) -> Result<BTreeMap<String, String>, ApiError> {
        self.indexed("Tag")
            .into_iter()
            .map(|(_, t)| {
                Ok((
                    t.required("Key")?.to_owned(),
                    t.get("Value").unwrap_or("").to_owned(),
                ))
            })
            .collect()
    }
}

/// One `Filter.N`.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Filter name, e.g. `attachment.instance-id` or `tag:Name`.
    pub name: String,
    /// Accepted values (`*` and `?` are wildcards, as in EC2).
    pub values: Vec<String>,
}

impl Filter {
    /// Whether any of `actual` matches any accepted value.
    pub fn matches<S: AsRef<str>>(&self, actual: &[S]) -> bool {
        actual
            .iter()
            .any(|a| self.values.iter().any(|v| glob(v, a.as_ref())))
    }
}

/// EC2's filter wildcards: `*` any run, `?` one character.
pub(crate) fn glob(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Builds an XML document.
#[derive(Debug, Default)]
pub struct Xml {
    buf: String,
}

impl Xml {
    /// Starts `<{action}Response xmlns=…><requestId>…</requestId>`.
    pub fn response(action: &str, request_id: &str) -> Self {
        let mut x = Xml::default();
        let _ = write!(
            x.buf,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{NAMESPACE}\">"
        );
        x.leaf("requestId", request_id);
        x
    }

    /// `<tag>`.
    pub fn open(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.buf, "<{tag}>");
        self
    }

    /// `</tag>`.
    pub fn close(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.buf, "</{tag}>");
        self
    }

    /// `<tag>escaped value</tag>`.
    pub fn leaf(&mut self, tag: &str, value: impl std::fmt::Display) -> &mut Self {
        let v = value.to_string();
        let _ = write!(self.buf, "<{tag}>{}</{tag}>", escape(&v));
        self
    }

    /// `<tag>` wrapped around `f`'s output.
    pub fn node(&mut self, tag: &str, f: impl FnOnce(&mut Self)) -> &mut Self {
        self.open(tag);
        f(self);
        self.close(tag)
    }

    /// `<tag><item>…</item>…</tag>`.
    pub fn set<T>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.open(tag);
        for it in items {
            self.open("item");
            f(self, it);
            self.close("item");
        }
        self.close(tag)
    }

    /// `<tag><item>value</item>…</tag>`: a list of plain values.
    pub fn values<T: std::fmt::Display>(
        &mut self,
        tag: &str,
        items: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        self.open(tag);
        for it in items {
            self.leaf("item", it);
        }
        self.close(tag)
    }

    /// Closes the response element.
    pub fn finish(mut self, action: &str) -> String {
        let _ = write!(self.buf, "</{action}Response>");
        self.buf
    }
}

/// Escapes text for XML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// EC2's error document.
pub fn error_xml(e: &ApiError, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        escape(&e.code),
        escape(&e.message),
        escape(request_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_filters_and_tags() {
        let p = Params::parse(
            b"Action=X&SecurityGroupId.2=sg-b&SecurityGroupId.1=sg-a&Filter.1.Name=tag%3AName&Filter.1.Value.1=web-*&Filter.2.Name=status&Filter.2.Value.1=in-use&TagSpecification.1.ResourceType=network-interface&TagSpecification.1.Tag.1.Key=k&TagSpecification.1.Tag.1.Value=v",
        );
        assert_eq!(p.list("SecurityGroupId"), vec!["sg-a", "sg-b"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0].name, "tag:Name");
        assert!(f[0].matches(&["web-1"]));
        assert!(!f[0].matches(&["db-1"]));
        assert_eq!(f[1].values, vec!["in-use"]);
        let tags = p.tag_specs("network-interface").unwrap();
        assert_eq!(tags.get("k").map(String::as_str), Some("v"));
        assert!(p.tag_specs("instance").is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbbd"));
        assert!(glob("eni-*", "eni-0abc"));
    }

    #[test]
    fn xml_is_escaped() {
        let mut x = Xml::response("DescribeX", "r-1");
        x.leaf("description", "a<b&c");
        let s = x.finish("DescribeX");
        assert!(s.contains("<description>a&lt;b&amp;c</description>"));
        assert!(s.contains(NAMESPACE));
    }
}
