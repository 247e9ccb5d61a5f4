//! The HTTP executor's request templates (`executor::http`): URL templates
//! (`UrlTemplate::parse` at config time, `render` per call) and JSON body
//! templates (`render_body`), filled from arbitrary inputs. Headers are
//! fixed by config and take no inputs, so they have nothing to render.
//!
//! Properties, for every rendering that succeeds:
//! - the URL parses, with the same scheme, host and port as the template
//!   rendered with harmless values: inputs never choose the host;
//! - it has as many path segments as the harmless rendering, the same
//!   number of `&`-separated query parts, and a fragment exactly when that
//!   one has one: a value never adds `/`, `?`, `#` or `&` unencoded, nor
//!   forms a `.`/`..` segment that resolution would remove;
//! - a rendered body has no key and no array element its template lacks.
//!
//! The input is text in three lines: the URL template, the inputs (a JSON
//! object; anything else counts as no inputs), and the body template (JSON,
//! the rest of the input). Seeds are realistic configs; libFuzzer mutates
//! templates (host included: `parse` must refuse what lets an input move
//! the host), values and bodies alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use private_worker::executor::http::{UrlTemplate, render_body};
use serde_json::{Map, Value};

/// Found by this target and closed in `UrlTemplate::parse`, which now
/// refuses a backslash or a control character in a template: URL parsing
/// reads `\` as `/` and drops tabs and newlines, so such a literal let an
/// input form a `..` segment (`https://crm.internal/files\{a}/x` with
/// `a = ".."` called `/x`). Reproducers stay in
/// corpus/template_render/known-gap-*.txt as regression seeds.

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let template = lines.next().unwrap_or("");
    let inputs = match serde_json::from_str::<Value>(lines.next().unwrap_or("")) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let body = lines.next().unwrap_or("");

    if let Ok(parsed) = UrlTemplate::parse(template) {
        url(template, &parsed, &inputs);
    }
    if let Ok(body) = serde_json::from_str::<Value>(body) {
        if let Ok(rendered) = render_body(&body, &inputs) {
            within(&body, &rendered);
        }
    }
});

fn url(text: &str, template: &UrlTemplate, inputs: &Map<String, Value>) {
    let Ok(rendered) = template.render(inputs) else {
        return;
    };
    let url = url::Url::parse(&rendered)
        .unwrap_or_else(|e| panic!("{text} rendered to {rendered:?}, not a URL: {e}"));
    // The same template with a harmless value for every input.
    let harmless: Map<String, Value> = template
        .inputs()
        .map(|name| (name.to_string(), Value::String("x".into())))
        .collect();
    let Ok(reference) = template.render(&harmless) else {
        // A template whose literals form a dot segment with any value.
        return;
    };
    let reference = url::Url::parse(&reference).expect("the harmless rendering is a URL");
    assert_eq!(url.scheme(), reference.scheme(), "{text} -> {rendered}");
    assert_eq!(url.host(), reference.host(), "{text} -> {rendered}");
    assert_eq!(url.port(), reference.port(), "{text} -> {rendered}");
    assert_eq!(url.username(), reference.username(), "{text} -> {rendered}");
    assert_eq!(url.password(), reference.password(), "{text} -> {rendered}");
    assert_eq!(
        url.path_segments().map(Iterator::count),
        reference.path_segments().map(Iterator::count),
        "{text} -> {rendered}: an input changed the path's shape ({} vs {})",
        url.path(),
        reference.path(),
    );
    assert_eq!(
        url.query().map(|q| q.split('&').count()),
        reference.query().map(|q| q.split('&').count()),
        "{text} -> {rendered}: an input changed the query's shape"
    );
    assert_eq!(
        url.fragment().is_some(),
        reference.fragment().is_some(),
        "{text} -> {rendered}"
    );
}

/// Every key and element of `rendered` comes from `template`.
fn within(template: &Value, rendered: &Value) {
    match (template, rendered) {
        (Value::Object(t), Value::Object(r)) => {
            for (key, value) in r {
                let source = t
                    .get(key)
                    .unwrap_or_else(|| panic!("key {key:?} is not in the body template"));
                within(source, value);
            }
        }
        (Value::Array(t), Value::Array(r)) => {
            assert_eq!(t.len(), r.len());
            for (t, r) in t.iter().zip(r) {
                within(t, r);
            }
        }
        // A whole-string placeholder takes the input's value, whatever it is.
        (Value::String(_), _) => {}
        (t, r) => assert_eq!(t, r, "a non-string template node changed"),
    }
}
