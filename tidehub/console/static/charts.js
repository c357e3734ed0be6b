// Draws the page's charts (Chart.js) from the data the page embeds in
// <script type="application/json" id="chart-data">, into each <canvas data-chart="NAME">.
"use strict";

(function () {
  var holder = document.getElementById("chart-data");
  if (!holder || typeof Chart === "undefined") return;
  var data = JSON.parse(holder.textContent);
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  Chart.defaults.color = dark ? "#c2c7d0" : "#373c44";
  Chart.defaults.borderColor = dark ? "rgba(255,255,255,0.12)" : "rgba(0,0,0,0.1)";
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.animation = false;
  var colours = { ok: "#2e8540", bad: "#c62828", other: "#8a8f98", credits: "#1f6feb" };

  var builders = {
    outcomes: function (d) {
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "succeeded", data: d.succeeded, backgroundColor: colours.ok, stack: "n" },
            { label: "failed or timed out", data: d.failed, backgroundColor: colours.bad, stack: "n" },
            { label: "other", data: d.other, backgroundColor: colours.other, stack: "n" },
          ],
        },
        options: { maintainAspectRatio: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
      };
    },
    usage: function (d) {
      return {
        type: "bar",
        data: { labels: d.labels, datasets: [{ label: "credits", data: d.credits, backgroundColor: colours.credits }] },
        options: { maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
      };
    },
  };

  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var name = canvas.getAttribute("data-chart");
    if (builders[name] && data[name]) {
      canvas.chart = new Chart(canvas, builders[name](data[name]));
      canvas.setAttribute("data-drawn", "true");
    }
  });
})();
