import { h, clear, copyButton } from "../dom";
import type { Ctx } from "../main";

// helpPage: where to go next. The Grafana recipe here is the short form of
// docs/grafana.md, with the device filled in when opened from a device.
export function helpPage(ctx: Ctx): void {
  const device = ctx.params.get("device") ?? "th-0001";
  const flux = `from(bucket: "fieldhub")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "telemetry" and r.device == "${device}")
  |> filter(fn: (r) => r._field == "temperature")
  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)`;
  const promql = `avg_over_time(temperature{device="${device}"}[$__interval])`;
  const influx = ctx.info.store === "influx";
  const code = (s: string) => h("div", { class: "codeline" }, h("pre", null, s), copyButton(() => s));
  clear(ctx.main,
    h("div", { class: "page-head" }, h("h1", null, "Help")),
    h("section", { class: "panel", id: "grafana" },
      h("h2", null, "Grafana"),
      ctx.info.store === "influx"
        ? h("p", null, "This hub stores telemetry in ", h("strong", null, "InfluxDB"), ": point Grafana's InfluxDB data source (query language Flux) at the same URL, organization and bucket as the hub's ",
          h("code", null, "store.influx"), " settings, with a read token. Readings are in measurement ", h("code", null, "telemetry"),
          ", tagged ", h("code", null, "device"), ", one field per metric.")
        : h("p", null, "This hub uses the ", h("strong", null, "embedded store"), ". Point Grafana's Prometheus data source at ",
          h("code", null, location.origin + "/prometheus"), " with the header ", h("code", null, "Authorization: Bearer <token>"),
          "; each metric is the series ", h("code", null, "<metric>{device=\"<id>\"}"), "."),
      h("p", null, "A panel of one metric of ", h("code", null, device), influx ? " (Flux):" : " (PromQL):"),
      code(influx ? flux : promql),
      h("p", { class: "muted" }, "The full recipe, with variables for device and metric and a fleet-wide panel, is in ", h("code", null, "docs/grafana.md"), " in the fieldhub repository.")),
    h("section", { class: "panel" },
      h("h2", null, "API"),
      h("p", null, "Everything here is done through the HTTP API, documented as OpenAPI 3 at ", h("a", { href: "/api/v1/openapi.json", target: "_blank", rel: "noopener" }, "/api/v1/openapi.json"),
        " (", h("code", null, "docs/api.md"), " explains it). Scripts authenticate with ", h("code", null, "Authorization: Bearer <token>"), "; create tokens on the ", h("a", { href: "#/tokens" }, "tokens page"), "."),
      code(`curl -H "Authorization: Bearer $FIELDHUB_TOKEN" ${location.origin}/api/v1/summary`)),
    h("section", { class: "panel" },
      h("h2", null, "Devices"),
      h("p", null, "A device connects with MQTT (3.1.1 or 5): client id and user name are its id, the password its token. It publishes JSON readings to ",
        h("code", null, "devices/{id}/telemetry"), ", takes commands on ", h("code", null, "devices/{id}/commands/{name}"), " and answers on ", h("code", null, "devices/{id}/replies/{command id}"), "."),
      code(`{"ts": 1733300000123, "metrics": {"temperature": 21.5, "door_open": false}}`)));
}
