//! HTML building blocks: escaping, the page shell, money and time formatting.
//! Every value that comes from the store goes through [`esc`]; the only raw
//! HTML is what this module and its siblings write.

use rust_decimal::Decimal;
use std::fmt::Write as _;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value (ids may hold `:` or `@`).
pub fn url_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Money as the admin API prints it (the exact decimal), with a `$` in front.
/// The element carries the bare decimal in `data-usd` for scripts and tests.
pub fn usd(v: Decimal) -> String {
    format!(r#"<span class="usd" data-usd="{v}">${v}</span>"#)
}

/// A fraction (0–1) as a percentage, e.g. `0.8` → `80%`.
pub fn percent(v: Decimal) -> String {
    format!("{}%", (v * Decimal::ONE_HUNDRED).normalize())
}

/// An optional value, or an em dash.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| esc(&v.to_string()))
        .unwrap_or_else(|| "—".to_string())
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Tenants,
    Usage,
    None,
}

/// A whole page. `live` pages are polled by `ui.js` (their `<main>` is
/// replaced in place every few seconds); without JavaScript they refresh.
pub fn page(title: &str, nav: Nav, live: bool, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · Tollgate</title>
<link rel="stylesheet" href="/ui/assets/ui.css">
<script src="/ui/assets/ui.js" defer></script>
{noscript}</head>
<body>
<header class="top">
<a class="brand" href="/ui">Tollgate</a>
"#,
        title = esc(title),
        noscript = if live {
            r#"<noscript><meta http-equiv="refresh" content="30"></noscript>
"#
        } else {
            ""
        },
    );
    if nav != Nav::None {
        let cur = |n: Nav| {
            if n == nav {
                r#" aria-current="page""#
            } else {
                ""
            }
        };
        let _ = write!(
            out,
            r#"<nav><a href="/ui"{}>Tenants</a> <a href="/ui/usage"{}>Usage</a></nav>
<span class="updated" id="updated"></span>
<form method="post" action="/ui/logout" class="logout"><button type="submit">Log out</button></form>
"#,
            cur(Nav::Tenants),
            cur(Nav::Usage)
        );
    }
    let _ = write!(
        out,
        r#"</header>
<main id="live"{poll}>
{body}</main>
</body>
</html>
"#,
        poll = if live { r#" data-poll-ms="5000""# } else { "" },
    );
    out
}

/// The login form. The token is posted in the body, never put in a URL.
pub fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, esc(e)))
        .unwrap_or_default();
    page(
        "Log in",
        Nav::None,
        false,
        &format!(
            r#"<section class="login">
<h1>Tollgate dashboard</h1>
{error}<form method="post" action="/ui/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit" id="login">Log in</button>
</form>
<p class="hint">The sidecar's <code>TOLLGATE_ADMIN_TOKEN</code>. It is checked once; the browser then keeps only a session cookie.</p>
</section>
"#
        ),
    )
}

/// A small error page (for a logged-in user).
pub fn error_page(status: u16, message: &str) -> String {
    page(
        "Error",
        Nav::Tenants,
        false,
        &format!(
            r#"<h1>Error {status}</h1>
<p class="error" role="alert">{}</p>
<p><a href="/ui">Back to the tenants</a></p>
"#,
            esc(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(url_part("a:b@c d/e"), "a%3Ab%40c%20d%2Fe");
    }

    #[test]
    fn money_is_the_exact_decimal() {
        let v = Decimal::from_str("0.000123").unwrap();
        assert_eq!(
            usd(v),
            r#"<span class="usd" data-usd="0.000123">$0.000123</span>"#
        );
        assert_eq!(percent(Decimal::from_str("0.8").unwrap()), "80%");
        assert_eq!(percent(Decimal::from_str("0.125").unwrap()), "12.5%");
    }

    #[test]
    fn only_live_pages_poll() {
        let live = page("x", Nav::Tenants, true, "");
        assert!(live.contains(r#"data-poll-ms="5000""#));
        assert!(live.contains("http-equiv=\"refresh\""));
        let login = login_page(Some("<bad>"));
        assert!(!login.contains("data-poll-ms"));
        assert!(login.contains("&lt;bad&gt;"));
        assert!(login.contains(r#"method="post" action="/ui/login""#));
    }
}
