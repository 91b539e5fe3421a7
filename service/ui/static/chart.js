// The live training chart (uPlot, installed from npm by `make install`): training loss per step,
// validation loss per epoch (at the step its checkpoint was taken), learning rate on its own axis.
// A resumed job repeats steps; the latest value of a step wins.

export class LossChart {
  constructor(el) {
    this.el = el;
    this.loss = new Map();
    this.valid = new Map();
    this.lr = new Map();
    this.plot = null;
    this.pending = false;
    if (!window.uPlot) {
      el.textContent = "The chart library is missing: run `make install` (npm ci in service/ui).";
    }
  }

  addStep(step, loss, lr) {
    if (step === undefined || step === null || loss === null || loss === undefined) return;
    this.loss.set(step, loss);
    if (lr !== null && lr !== undefined) this.lr.set(step, lr);
    this.schedule();
  }

  addValid(step, loss) {
    if (step === undefined || loss === null || loss === undefined) return;
    this.valid.set(step, loss);
    this.schedule();
  }

  // Many events arrive at once when a page opens on a long job: draw once per frame.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  data() {
    const steps = [...new Set([...this.loss.keys(), ...this.valid.keys()])].sort((a, b) => a - b);
    const col = (m) => steps.map((s) => (m.has(s) ? m.get(s) : null));
    return [steps, col(this.loss), col(this.valid), col(this.lr)];
  }

  draw() {
    this.el.dataset.points = String(this.loss.size);
    this.el.dataset.validPoints = String(this.valid.size);
    if (!window.uPlot) return;
    const data = this.data();
    if (this.plot) { this.plot.setData(data); return; }
    const width = () => Math.max(280, this.el.clientWidth || 600);
    this.plot = new window.uPlot({
      width: width(), height: 260,
      scales: { x: { time: false }, lr: { auto: true } },
      axes: [{ label: "step" }, { label: "loss" },
             { scale: "lr", side: 1, label: "learning rate", grid: { show: false },
               values: (u, vals) => vals.map((v) => v.toExponential(0)) }],
      series: [{ label: "step" },
               { label: "training loss", stroke: "#2563eb", width: 2, spanGaps: true },
               { label: "validation loss", stroke: "#dc2626", width: 0, points: { show: true, size: 9, fill: "#dc2626" } },
               { label: "learning rate", stroke: "#9ca3af", width: 1, dash: [4, 4], scale: "lr", spanGaps: true }],
    }, data, this.el);
    this.resize = () => this.plot && this.plot.setSize({ width: width(), height: 260 });
    window.addEventListener("resize", this.resize);
  }

  destroy() {
    if (this.resize) window.removeEventListener("resize", this.resize);
    if (this.plot) this.plot.destroy();
  }
}
