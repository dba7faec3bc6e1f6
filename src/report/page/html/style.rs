//! The page's only assets, inline: its stylesheet (screen and print) and the small optional
//! script that sorts a table by a clicked column.

pub(super) const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --soft:#f5f7fa; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:#fff; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
nav { margin: 14px 0 0; font-size: 14px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
.verdict { font-size: 19px; line-height: 1.4; margin: 20px 0 14px; padding: 14px 18px; border-left: 5px solid #2ca02c; background: #f1f8f1; }
.verdict.none { border-color: #999; background: var(--soft); }
section { margin-top: 36px; }
h2 { font-size: 20px; margin: 0 0 6px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
p.lead { margin: 4px 0 10px; color: var(--muted); }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #9aa1ad; text-align: center; }
td.model { font-weight: 600; min-width: 11em; max-width: 22em; overflow-wrap: anywhere; }
td.note { min-width: 11em; max-width: 22em; color: var(--muted); font-size: 12.5px; }
table.leader { width: 100%; }
table.leader td, table.leader th { padding: 6px 7px; }
td.err { max-width: 46em; overflow-wrap: anywhere; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
tr.best td { background: #eef7ee; }
table.leader td.model { font-size: 14.5px; }
.notes { color: var(--muted); font-size: 13px; margin: 4px 0; padding-left: 18px; }
figure { margin: 8px 0; }
figure svg { width: 100%; max-width: 960px; height: auto; display: block; }
.key { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; }
.key li { display: flex; align-items: center; gap: 6px; overflow-wrap: anywhere; }
.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; flex: none; }
.sw.round { border-radius: 50%; }
.sw.tri { width: 0; height: 0; border-radius: 0; border-left: 7px solid transparent; border-right: 7px solid transparent; border-bottom: 13px solid; background: none !important; }
td.k { text-align: center; font-variant-numeric: tabular-nums; min-width: 5.5em; }
.empty { color: var(--muted); font-style: italic; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--accent); font-size: 14px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12.5px; }
th[data-sort] { cursor: pointer; }
@page { size: landscape; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  .wide { overflow: visible; }
  table { font-size: 8.5pt; }
  th, td { padding: 3px 5px; }
  td.model { min-width: 7em; }
  td.note { min-width: 0; }
  td.err { font-size: 8pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  section { break-inside: avoid-page; margin-top: 18px; }
  figure, table { break-inside: avoid; }
  .verdict { border-left-width: 3px; }
  a { color: inherit; text-decoration: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

/// Click a column header to sort by it; the page reads the same without it.
pub(super) const SCRIPT: &str = r#"
(function () {
  document.querySelectorAll("table.sortable thead th").forEach(function (th, col) {
    th.setAttribute("data-sort", "");
    th.title = "sort by this column";
    th.addEventListener("click", function () {
      var body = th.closest("table").tBodies[0];
      var asc = th.getAttribute("data-dir") !== "asc";
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var c = r.cells[col]; return c ? (c.getAttribute("data-v") || c.textContent) : ""; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        var d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.documentElement.setAttribute("data-script", "ran");
})();
"#;
