import { api, get, type APIToken, type CreatedToken } from "../api";
import { h, clear, errorBox, relTime, fmtTime, copyButton, errText } from "../dom";
import type { Ctx } from "../main";

// tokensPage manages operator API tokens (for scripts, the CLI, Grafana
// and this UI). Every token has full rights.
export function tokensPage(ctx: Ctx): void {
  const body = h("tbody");
  const name = h("input", { type: "text", id: "token-name", placeholder: "e.g. grafana, ci, alice", maxlength: 64, required: true });
  const created = h("div");
  const msg = h("p", { class: "form-error", role: "alert" });
  const form = h("form", { class: "toolbar" }, name, h("button", { type: "submit", class: "btn primary" }, "Create token"), msg);
  clear(ctx.main,
    h("div", { class: "page-head" }, h("h1", null, "API tokens")),
    h("p", { class: "muted" }, "Operator tokens authenticate scripts (", h("code", null, "Authorization: Bearer …"), "), the CLI (", h("code", null, "FIELDHUB_TOKEN"),
      "), Prometheus scrapes of /metrics and logins to this UI. Deleting a token ends its sessions."),
    form, created,
    h("table", { class: "table" }, h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Id"), h("th", null, "Created"), h("th", null, "Last used"), h("th", null, ""))), body));
  const load = async () => {
    try {
      const r = await get<{ tokens: APIToken[]; current: string }>("/api/v1/tokens");
      clear(body, r.tokens.map((t) => {
        const del = h("button", { type: "button", class: "btn small danger" }, "Delete");
        del.addEventListener("click", async () => {
          if (!confirm(`Delete the token "${t.name}"? Everything using it loses access.`)) return;
          try { await api("DELETE", `/api/v1/tokens/${t.id}`); load(); } catch (e) { alert(errText(e)); }
        });
        return h("tr", null, h("td", null, t.name, t.id === r.current ? h("span", { class: "badge" }, "this session") : null),
          h("td", null, h("code", null, t.id)), h("td", { title: fmtTime(t.created_at) }, relTime(t.created_at)),
          h("td", null, relTime(t.last_used)), h("td", null, del));
      }));
    } catch (e) { clear(body, h("tr", null, h("td", { colspan: 5 }, errorBox(e, load)))); }
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    try {
      const r = await api<CreatedToken>("POST", "/api/v1/tokens", { name: name.value.trim() });
      name.value = "";
      clear(created, h("div", { class: "token-panel" }, h("p", null, h("strong", null, `Token "${r.token.name}" created. Copy it now: `), "it is not shown again."),
        h("div", { class: "codeline" }, h("code", null, r.secret), copyButton(() => r.secret))));
      load();
    } catch (er) { msg.textContent = errText(er); }
  });
  load();
}
