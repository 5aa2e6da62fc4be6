// A uPlot chart of one metric. Zooming (drag across the plot) is handed
// to the page, which refetches every chart for the new range with a finer
// server-side step: a chart never holds more than ~1,000 points per series.
import uPlot from "uplot";
import type { Point } from "./api";

export const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];

// stepFor picks the smallest nice step (seconds) giving at most 1000 buckets.
export function stepFor(rangeMs: number): number {
  const want = rangeMs / 1000 / 1000;
  return STEPS.find((s) => s >= want) ?? STEPS[STEPS.length - 1];
}

export class MetricChart {
  readonly el: HTMLElement;
  private u: uPlot;
  private xs: number[] = [];
  private ys: (number | null)[] = [];
  private ro: ResizeObserver;
  private stepSec = 1;

  constructor(parent: HTMLElement, readonly metric: string, unit: string, onZoom: (fromMs: number, toMs: number) => void, bool = false) {
    this.el = document.createElement("div");
    this.el.className = "chart";
    this.el.dataset.metric = metric;
    parent.appendChild(this.el);
    const width = Math.max(300, parent.clientWidth - 2);
    const opts: uPlot.Options = {
      width, height: 180,
      // Booleans are stored as 0/1: draw them as steps on a fixed 0..1 axis.
      scales: bool ? { x: { time: true }, y: { range: [-0.1, 1.1] } } : { x: { time: true } },
      legend: { show: true },
      cursor: { drag: { x: true, y: false, setScale: false } },
      series: [
        {},
        { label: unit ? `${metric} (${unit})` : metric, stroke: "#1f6feb", width: 1.5, fill: "rgba(31,111,235,0.08)", points: { show: false },
          paths: bool ? uPlot.paths.stepped!({ align: 1 }) : undefined,
          value: (_u, v) => (v == null ? "—" : String(Number(v.toFixed(3)))) },
      ],
      axes: [{ stroke: "#5b6776", grid: { stroke: "#eef1f4" } },
        { stroke: "#5b6776", grid: { stroke: "#eef1f4" }, size: 56, ...(bool ? { splits: () => [0, 1], values: (_u: uPlot, v: number[]) => v.map((x) => (x ? "true" : "false")) } : {}) }],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 5) return;
          const from = u.posToVal(u.select.left, "x") * 1000;
          const to = u.posToVal(u.select.left + u.select.width, "x") * 1000;
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          onZoom(Math.floor(from), Math.ceil(to));
        }],
      },
    };
    this.u = new uPlot(opts, [[], []], this.el);
    this.ro = new ResizeObserver(() => {
      const w = Math.max(300, parent.clientWidth - 2);
      if (Math.abs(w - this.u.width) > 4) this.u.setSize({ width: w, height: 180 });
    });
    this.ro.observe(parent);
  }

  // setData replaces the points (ms timestamps) and the x range shown.
  setData(points: Point[], fromMs: number, toMs: number, stepSec: number) {
    this.stepSec = stepSec;
    this.xs = points.map((p) => p.ts / 1000);
    this.ys = points.map((p) => p.value);
    this.el.classList.toggle("no-data", points.length === 0);
    this.u.setData([this.xs, this.ys], false);
    this.u.setScale("x", { min: fromMs / 1000, max: toMs / 1000 });
    this.mark();
  }

  // mark exposes the chart's state on its element (for people inspecting
  // the page, and for the browser test).
  private mark() {
    const d = this.el.dataset;
    d.points = String(this.xs.length);
    d.step = String(this.stepSec);
    d.last = this.xs.length ? String(Math.round(this.xs[this.xs.length - 1] * 1000)) : "";
  }

  // append adds a live sample and slides the window to end at nowMs. A
  // sample within the step of the last point replaces it, so a long-open
  // page keeps ~1000 points.
  append(tsMs: number, value: number, fromMs: number, toMs: number) {
    const x = tsMs / 1000;
    const n = this.xs.length;
    if (n > 0 && x < this.xs[n - 1]) return; // late sample: the next refetch has it
    if (n > 0 && x - this.xs[n - 1] < this.stepSec) {
      this.ys[n - 1] = value;
    } else {
      this.xs.push(x);
      this.ys.push(value);
    }
    const min = fromMs / 1000;
    let cut = 0;
    while (cut < this.xs.length && this.xs[cut] < min) cut++;
    if (cut > 0) { this.xs.splice(0, cut); this.ys.splice(0, cut); }
    this.el.classList.remove("no-data");
    this.u.setData([this.xs, this.ys], false);
    this.u.setScale("x", { min, max: toMs / 1000 });
    this.mark();
  }

  get points(): number { return this.xs.length; }

  destroy() {
    this.ro.disconnect();
    this.u.destroy();
    this.el.remove();
  }
}
