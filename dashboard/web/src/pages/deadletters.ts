import { api, get, enc, ApiError, type DeadLetter, type DeadLetterPage } from "../api";
import { h, clear, errorBox, relTime, fmtTime, emptyState, errText } from "../dom";
import { openStream } from "../live";
import type { Ctx } from "../main";

export interface DLTableOptions {
  device?: string;
  reason?: string;
  includeReplayed?: boolean;
  limit?: number;
  compact?: boolean;
}

// deadLetterTable lists dead letters with a Replay button each. A replay
// validates the message again with today's schema: when it still fails,
// the new reason is shown on the row.
export function deadLetterTable(o: DLTableOptions): { el: HTMLElement; reload: () => void; dispose: () => void } {
  const body = h("tbody");
  const more = h("button", { type: "button", class: "btn small", hidden: true }, "Load more");
  const el = h("div", { class: "dl-table" },
    h("table", { class: "table" },
      h("thead", null, h("tr", null, h("th", null, "#"), h("th", null, "Received"), o.compact ? null : h("th", null, "Device"),
        h("th", null, "Reason"), h("th", null, "Detail"), h("th", null, "Payload"), h("th", null, ""))),
      body),
    more);
  let next = "";
  let rows: DeadLetter[] = [];
  const failed = new Map<number, string>();

  const row = (d: DeadLetter) => {
    const status = d.replayed_at && !d.replay_error
      ? h("span", { class: "badge state-succeeded" }, "replayed")
      : (() => {
        const b = h("button", { type: "button", class: "btn small", "data-replay": String(d.id) }, "Replay");
        b.addEventListener("click", async () => {
          b.disabled = true;
          try {
            await api("POST", `/api/v1/deadletters/${d.id}/replay`);
            failed.delete(d.id);
          } catch (e) {
            failed.set(d.id, e instanceof ApiError && e.status === 422 ? "still invalid: " + e.message : errText(e));
          }
          reload();
        });
        return b;
      })();
    const err = failed.get(d.id) ?? (d.replay_error ? "last replay: " + d.replay_error : "");
    return h("tr", { "data-dl": String(d.id) },
      h("td", { class: "muted" }, String(d.id)),
      h("td", { class: "nowrap", title: fmtTime(d.received_at) }, relTime(d.received_at)),
      o.compact ? null : h("td", null, h("a", { href: `#/devices/${enc(d.device)}` }, d.device)),
      h("td", null, h("span", { class: "badge reason" }, d.reason)),
      h("td", { class: "detail" }, d.detail, err ? h("div", { class: "bad-text small" }, err) : null),
      h("td", null, h("code", { class: "payload", title: d.payload }, d.payload.length > 60 ? d.payload.slice(0, 57) + "…" : d.payload)),
      h("td", null, status));
  };
  const render = () => {
    if (rows.length === 0) {
      clear(body, h("tr", null, h("td", { colspan: o.compact ? 6 : 7 }, emptyState("No dead letters",
        o.includeReplayed ? "Nothing was rejected." : "Every rejected message has been replayed, or none was rejected."))));
    } else {
      clear(body, rows.map(row));
    }
    more.hidden = !next;
  };
  const query = (after: string) => {
    const q = new URLSearchParams({ limit: String(o.limit ?? 100) });
    if (o.device) q.set("device", o.device);
    if (o.reason) q.set("reason", o.reason);
    if (o.includeReplayed) q.set("replayed", "true");
    if (after) q.set("after", after);
    return "/api/v1/deadletters?" + q;
  };
  let seq = 0;
  const reload = async () => {
    const s = ++seq;
    try {
      const pages: DeadLetter[] = [];
      let after = "";
      // Reload as many as were shown, so a replay does not shrink the view.
      do {
        const p = await get<DeadLetterPage>(query(after));
        pages.push(...p.dead_letters);
        after = p.next;
      } while (after && pages.length < rows.length);
      if (s !== seq) return;
      rows = pages;
      next = after;
      render();
    } catch (e) {
      clear(body, h("tr", null, h("td", { colspan: 7 }, errorBox(e, reload))));
    }
  };
  more.addEventListener("click", async () => {
    try {
      const p = await get<DeadLetterPage>(query(next));
      rows.push(...p.dead_letters);
      next = p.next;
      render();
    } catch (e) { alert(errText(e)); }
  });
  reload();
  return { el, reload, dispose: () => { seq++; } };
}

// deadLettersPage: every device's rejected messages, filterable, live.
export function deadLettersPage(ctx: Ctx): () => void {
  const device = h("input", { type: "search", id: "dl-device", placeholder: "Device id", value: ctx.params.get("device") ?? "" });
  const reason = h("select", { id: "dl-reason" }, h("option", { value: "" }, "Any reason"),
    ...["bad_payload", "wrong_type", "out_of_range", "unknown_metric", "too_old", "too_new", "store_refused"].map((r) => h("option", { value: r }, r)));
  const replayed = h("input", { type: "checkbox", id: "dl-replayed" });
  const note = h("span", { class: "muted" });
  const holder = h("div");
  clear(ctx.main,
    h("div", { class: "page-head" }, h("h1", null, "Dead letters")),
    h("p", { class: "muted" }, "Messages the hub rejected, kept with their raw payload and the reason. ",
      "After fixing the device type (configs/device-types.yaml) and restarting the hub, Replay validates a message again and stores it if it passes."),
    h("div", { class: "toolbar" }, device, reason, h("label", { class: "check" }, replayed, " include replayed"), note),
    holder);
  let table = deadLetterTable({});
  const build = () => {
    table.dispose();
    table = deadLetterTable({ device: device.value.trim() || undefined, reason: reason.value || undefined, includeReplayed: replayed.checked });
    clear(holder, table.el);
    clear(note);
  };
  let t: number | undefined;
  device.addEventListener("input", () => { clearTimeout(t); t = window.setTimeout(build, 300); });
  reason.addEventListener("change", build);
  replayed.addEventListener("change", build);
  build();
  let fresh = 0;
  const stop = openStream({
    types: ["rejection"],
    onEvent: () => {
      fresh++;
      const b = h("button", { type: "button", class: "btn small" }, "Show");
      b.addEventListener("click", () => { fresh = 0; build(); });
      clear(note, `${fresh} new since loaded `, b);
    },
  });
  return () => { stop(); table.dispose(); clearTimeout(t); };
}
