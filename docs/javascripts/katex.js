// Typeset the formulas that pymdownx.arithmatex (generic mode) marks, with the KaTeX copied into
// the site at build time (docs/hooks/katex.py). Runs on every page load, including Material's
// instant navigation (document$).
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.querySelector(".katex")) return;
      var tex = el.textContent.trim();
      var display = el.tagName === "DIV";
      if (display && tex.startsWith("\\[") && tex.endsWith("\\]")) tex = tex.slice(2, -2);
      if (!display && tex.startsWith("\\(") && tex.endsWith("\\)")) tex = tex.slice(2, -2);
      katex.render(tex, el, { displayMode: display, throwOnError: false });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document); });
  }
})();
