//! The status page: one server-rendered table row per pipeline with inline SVG
//! sparklines; a few lines of JS re-fetch the rows every second.

use std::fmt::Write as _;

use super::{PipelineStatus, StatusDocument};

/// Seconds shown in the sparklines.
const SPARK_SECONDS: usize = 120;

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evercache status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.down{color:#b00020;font-weight:600}
.err{color:#b00020;font-size:12px;max-width:32em;overflow-wrap:anywhere}
svg{display:block}
small{color:#666}
</style></head><body>
<h1>evercache</h1>
"#;

const SCRIPT: &str = r#"<script>
// Re-fetch the server-rendered rows; keep the last ones when the runtime is unreachable.
const body = document.getElementById('rows'), updated = document.getElementById('updated');
let refreshes = 0;
async function refresh() {
  try {
    const response = await fetch('/rows', {cache: 'no-store'});
    if (!response.ok) throw new Error(response.status);
    body.innerHTML = await response.text();
    refreshes += 1;
    document.body.dataset.refreshes = refreshes;
    updated.textContent = 'updated ' + new Date().toLocaleTimeString();
    updated.className = '';
  } catch (e) {
    updated.textContent = 'runtime unreachable (' + e.message + ')';
    updated.className = 'down';
  }
}
refresh();
setInterval(refresh, 1000);
</script>
"#;

/// The whole page.
pub fn render(doc: &StatusDocument) -> String {
    let mut out = String::from(HEAD);
    let _ = write!(out, "<p><span id=\"updated\">rendered at {}</span>", doc.now_ms);
    for cache in doc.facts.iter().flat_map(|f| &f.caches) {
        match cache.used_memory {
            Some(bytes) => {
                let _ = write!(
                    out,
                    " · cache <b>{}</b> used_memory <span class=\"memory\" data-cache=\"{0}\">{bytes}</span> B",
                    esc(&cache.cache)
                );
                if let Some(ratio) = cache.hit_ratio() {
                    let _ = write!(out, ", hit ratio <span class=\"hit-ratio\">{:.1}%</span>", ratio * 100.0);
                }
            }
            None => {
                let _ = write!(out, " · cache <b>{}</b> <span class=\"down\">unreachable</span>", esc(&cache.cache));
            }
        }
    }
    out.push_str("</p>\n<table><thead><tr><th>pipeline</th><th>source</th><th>plugin</th><th>events</th>");
    let _ = write!(out, "<th>throughput (events/s, last {SPARK_SECONDS}s)</th><th>delay (ms)</th>");
    out.push_str(
        "<th>lag</th><th>pending</th><th>slot lag (B)</th><th>dead letters</th><th>last errors</th></tr></thead>\n",
    );
    out.push_str("<tbody id=\"rows\">");
    out.push_str(&rows(doc));
    out.push_str("</tbody></table>\n");
    out.push_str(SCRIPT);
    out.push_str("</body></html>\n");
    out
}

/// The table rows alone (what the script re-fetches).
pub fn rows(doc: &StatusDocument) -> String {
    let mut out = String::new();
    for p in &doc.pipelines {
        row(&mut out, p, doc.now_ms);
    }
    out
}

fn row(out: &mut String, p: &PipelineStatus, now_ms: u64) {
    let s = &p.stats;
    let recent = &s.history[s.history.len().saturating_sub(SPARK_SECONDS)..];
    let events: Vec<u64> = recent.iter().map(|x| x.events).collect();
    let delays: Vec<u64> = recent.iter().map(|x| x.max_delay_ms).collect();
    // The current second is still filling up: the rate is over the 10 before it.
    let rate = events.iter().rev().skip(1).take(10).sum::<u64>() as f64 / 10.0;
    let name = esc(&p.name);
    let _ = write!(out, "<tr data-pipeline=\"{name}\"><td><b>{name}</b>");
    if let Some(stuck) = &p.stuck {
        let _ = write!(out, "<br><small class=\"down stuck\">stuck: {}</small>", esc(&truncate(stuck, 300)));
    }
    out.push_str("</td>");
    let source_class = if p.source_up { "" } else { " class=\"down\"" };
    let _ = write!(out, "<td{source_class}>{}{}</td>", esc(&p.source), if p.source_up { "" } else { " (down)" });
    let loaded = (now_ms.saturating_sub(s.plugin_loaded_at_ms)) / 1000;
    let _ =
        write!(out, "<td><span class=\"plugin\">{}</span><br><small>loaded {loaded}s ago</small></td>", esc(&s.plugin));
    let _ = write!(out, "<td class=\"n events\">{}", s.events);
    if s.reads.hits + s.reads.misses > 0 {
        let r = &s.reads;
        let _ = write!(
            out,
            "<br><small class=\"reads\">reads: {} hits, {} misses ({} filled), {} refreshed</small>",
            r.hits, r.misses, r.filled, r.refreshed
        );
    }
    out.push_str("</td>");
    let _ = write!(out, "<td><span class=\"rate\">{rate:.1}</span>/s{}</td>", spark(&events, "#2a6"));
    let last_delay = s.last_delay_ms.map_or("-".to_owned(), |d| d.to_string());
    let _ = write!(out, "<td><span class=\"delay\">{last_delay}</span>{}</td>", spark(&delays, "#c60"));
    for (class, value) in [("lag", p.lag_entries), ("pending", p.pending_entries), ("slot-lag", p.lag_bytes)] {
        let _ = write!(out, "<td class=\"n {class}\">{}</td>", value.map_or("-".to_owned(), |v| v.to_string()));
    }
    let _ = write!(out, "<td class=\"n dead-letters\">{}</td><td class=\"errors\">", s.dead_letters);
    for error in s.errors.iter().rev().take(3) {
        let ago = now_ms.saturating_sub(error.at_ms) / 1000;
        let _ = write!(
            out,
            "<div class=\"err\"><b>{}</b> {ago}s ago: {}</div>",
            esc(&error.kind),
            esc(&truncate(&error.message, 300))
        );
    }
    out.push_str("</td></tr>\n");
}

/// An inline SVG polyline of `values`, scaled to its maximum.
fn spark(values: &[u64], color: &str) -> String {
    let (width, height) = (240.0, 32.0);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = width / (values.len().max(2) - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, height - 1.0 - (*v as f64 / max) * (height - 2.0)))
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{width}\" height=\"{height}\" data-max=\"{max}\"><polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert!(spark(&[0, 5, 10], "#000").contains("points=\"0.0,31.0 120.0,16.0 240.0,1.0\""));
    }
}
