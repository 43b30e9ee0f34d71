"""The gallery page's own style sheet and script: inline, hashed into its Content-Security-Policy
(see :mod:`._gallery`), so the page needs nothing from the network."""

from __future__ import annotations

__all__ = ["SCRIPT", "STYLE"]

STYLE = """
:root { color-scheme: light dark; --line: #8884; --dim: #888; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; }
header { position: sticky; top: 0; padding: .75rem 0; background: Canvas; z-index: 1;
         border-bottom: 1px solid var(--line); }
h1 { font-size: 1.25rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
#filter { width: min(36rem, 100%); font: inherit; padding: .35rem .5rem; }
.counts, .dim { color: var(--dim); }
.grid { display: grid; gap: 1rem; margin-top: 1rem;
        grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }
figure img, .noimage { display: block; width: 100%; height: auto; background: #8882; }
.noimage { aspect-ratio: 1; display: flex; align-items: center; justify-content: center;
           padding: 1rem; text-align: center; overflow-wrap: anywhere; }
figcaption { padding: .5rem .6rem .6rem; }
.prompt { margin: 0 0 .35rem; overflow-wrap: anywhere; }
.negative { margin: 0 0 .35rem; color: var(--dim); overflow-wrap: anywhere; }
.glance { margin: 0 0 .2rem; color: var(--dim); font-size: 12px; overflow-wrap: anywhere; }
summary { color: var(--dim); font-size: 12px; cursor: pointer; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .6rem; margin: .25rem 0 0;
     font-size: 12px; }
dt { color: var(--dim); }
dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: .3rem .5rem;
         border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
td.message { white-space: pre-wrap; }
.notes li { color: var(--dim); }
[hidden] { display: none !important; }
"""

# Filters every element marked data-filter by its text: all the words typed must occur in it.
SCRIPT = """
(function () {
  var box = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
  var texts = items.map(function (el) { return el.textContent.toLowerCase(); });
  function apply() {
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var count = 0;
    items.forEach(function (el, i) {
      var hit = words.every(function (w) { return texts[i].indexOf(w) !== -1; });
      el.hidden = !hit;
      if (hit && el.tagName === "FIGURE") { count += 1; }
    });
    shown.textContent = String(count);
  }
  box.addEventListener("input", apply);
  apply();
})();
"""
