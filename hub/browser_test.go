package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fieldhub/fieldhub/devicesim"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// browserFleet is the simulated fleet of the browser test: thermostats
// (validated strictly by the built-in type) and meters, fast enough that
// charts move within a second.
const browserFleet = `
seed: 11
broker: tcp://127.0.0.1:1
interval: 500ms
qos: 1
backoff: {min: 200ms, max: 2s, jitter: 0.2}
devices:
  - type: thermostat
    id_prefix: th-
    count: 8
    labels: {site: lab}
    metrics:
      temperature: {model: sine, period: 1m, amplitude: 2.5, offset: 21, noise: 0.2, decimals: 2}
      humidity:    {model: random_walk, start: 45, step: 0.5, min: 20, max: 80, decimals: 1}
      heating:     {model: toggle, probability: 0.05, initial: false}
  - type: meter
    id_prefix: mt-
    count: 4
    labels: {site: plant}
    metrics:
      power:   {model: sine, period: 2m, amplitude: 400, offset: 600, noise: 25, decimals: 1}
      voltage: {model: constant, value: 230}
`

// apiAdder provisions simulated devices through the hub's HTTP API.
type apiAdder struct {
	base, token string
}

func (a apiAdder) AddDevice(ctx context.Context, id, typ string, labels map[string]string) (string, error) {
	body, _ := json.Marshal(map[string]any{"id": id, "type": typ, "labels": labels})
	req, _ := http.NewRequestWithContext(ctx, "POST", a.base+"/api/v1/devices", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 201 {
		return "", fmt.Errorf("add %s: %d %s", id, res.StatusCode, b)
	}
	var out struct{ Token string }
	return out.Token, json.Unmarshal(b, &out)
}

// browser drives one Chromium tab.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	bin := testkit.Binary(t, "chromium")
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc() // stops the browser and waits for it
	})
	shots := filepath.Join(testkit.RepoRoot(), "test-artifacts", "screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, ctx: ctx, shots: shots}
	// The first action starts the browser, for the life of its context:
	// run it on b.ctx itself, not on a context with a timeout.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// wait polls a JavaScript condition until it is truthy (30 s at most).
func (b *browser) wait(what, cond string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 40*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second)))
	if err != nil {
		b.shot("failed-" + strings.ReplaceAll(what, " ", "-"))
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 3000)`))
		b.t.Fatalf("waiting for %s (%s): %v\npage text:\n%s", what, cond, err, text)
	}
}

// set types a value into an input as a person would (the page sees an
// input event).
func (b *browser) set(id, value string) {
	b.t.Helper()
	js, _ := json.Marshal(value)
	b.do(chromedp.WaitVisible(chromedp.ID(id)))
	evalJS[bool](b, fmt.Sprintf(`(() => { const el = document.getElementById(%q); el.value = %s; el.dispatchEvent(new Event("input", {bubbles: true})); return true })()`, id, js))
}

func evalJS[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shot saves a full-page PNG under test-artifacts/screenshots.
func (b *browser) shot(name string) {
	b.t.Helper()
	evalJS[bool](b, `(() => { window.scrollTo(0, 0); return true })()`) // the sticky header belongs at the top
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
}

func (b *browser) login(token string) {
	b.t.Helper()
	b.set("token", token)
	b.do(chromedp.Click(chromedp.ID("login")))
	b.wait("the app shell", `document.querySelector("nav.nav") !== null`)
}

// TestBrowserDashboard drives the web UI in Debian's Chromium against a
// real hub fed by simulated devices: log in with the admin token, watch
// the device list fill, add a device (token shown once; it works with
// mosquitto_pub), open a device and see its chart draw and then move with
// live data, change the range (server-side bucketing), send a command and
// watch it reach succeeded, set a twin value and see it reported, see a
// rejected message in the dead letters, fail to replay it, restart the hub
// with a relaxed device type and replay it. Screenshots of each page go to
// test-artifacts/screenshots/.
func TestBrowserDashboard(t *testing.T) {
	b := newBrowser(t)
	cfg := testConfig(t)
	// Fixed ports: the hub restarts in the middle and devices reconnect.
	cfg.MQTT.Addr = testkit.FreeAddr(t)
	cfg.HTTP.Addr = testkit.FreeAddr(t)
	h := startHub(t, cfg)
	base := "http://" + h.Addrs().HTTP
	if res, err := http.Get(base + "/"); err != nil {
		t.Fatal(err)
	} else if res.Body.Close(); res.StatusCode == http.StatusServiceUnavailable {
		testkit.Missing(t, "the web UI is not built (run `make assets`)")
	}
	tok, err := os.ReadFile(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(tok))

	// The simulated fleet, provisioned through the API.
	ctx := context.Background()
	prof, err := devicesim.ParseProfile([]byte(browserFleet))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := devicesim.Provision(ctx, prof, apiAdder{base, admin}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := devicesim.NewFleet(devicesim.FleetConfig{Profile: prof, Broker: "tcp://" + h.Addrs().MQTT, Credentials: devicesim.CredentialMap(creds)})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fleet.Stop)
	// One device that sends an impossible temperature: rejected as
	// out_of_range by the built-in thermostat type.
	badTok, err := apiAdder{base, admin}.AddDevice(ctx, "th-bad", "thermostat", map[string]string{"site": "lab"})
	if err != nil {
		t.Fatal(err)
	}
	pahoClient(t, h, "th-bad", badTok, false).Publish(telemetry.TelemetryTopic("th-bad"), 1, false, `{"metrics": {"temperature": 999.5}}`).WaitTimeout(10 * time.Second)

	// Login.
	b.do(chromedp.Navigate(base + "/"))
	b.do(chromedp.WaitVisible(chromedp.ID("token")))
	b.set("token", "fha_wrong")
	b.do(chromedp.Click(chromedp.ID("login")))
	b.wait("the login error", `document.querySelector(".form-error").textContent.includes("not valid")`)
	b.shot("01-login")
	b.login(admin)

	// Overview: counts, live rates, the rejection.
	b.wait("the device count", `document.querySelector("#card-total .card-value")?.textContent === "13"`)
	b.wait("devices online", `Number(document.querySelector("#card-online .card-value")?.textContent) >= 12`)
	b.wait("a reading rate", `Number(document.querySelector("#card-readings .card-value")?.textContent) > 0`)
	b.wait("the recent rejection", `document.querySelector("#recent-rejections")?.textContent.includes("th-bad")`)
	b.shot("02-overview")

	// Device list: fills, online dots, latest values, search.
	b.do(chromedp.Navigate(base + "/#/devices"))
	b.wait("13 devices listed", `document.querySelectorAll("#device-list .vrow").length === 13 && document.querySelector("#device-count").textContent === "13 devices"`)
	b.wait("online dots", `document.querySelectorAll("#device-list .vrow .dot.on").length >= 12`)
	b.wait("latest values", `document.querySelectorAll("#device-list .kv").length >= 12`)
	b.shot("03-devices")
	b.do(chromedp.SendKeys(chromedp.ID("device-search"), "mt-"))
	b.wait("the search", `document.querySelectorAll("#device-list .vrow").length === 4`)
	b.set("device-search", "th")
	b.wait("the search again", `document.querySelectorAll("#device-list .vrow").length === 9`)

	// Add a device: the token is shown once, with a working example.
	b.do(chromedp.Click(chromedp.ID("add-device")), chromedp.WaitVisible(chromedp.ID("new-id")),
		chromedp.SendKeys(chromedp.ID("new-id"), "th-new"))
	b.set("new-labels", "site=lobby")
	b.do(chromedp.Click(chromedp.ID("create-device")))
	b.wait("the new token", `document.querySelector("#new-token")?.textContent.startsWith("fhd_")`)
	b.wait("the mosquitto_pub example", `document.querySelector("#mqtt-example")?.textContent.includes("mosquitto_pub")`)
	b.shot("04-add-device")
	newTok := evalJS[string](b, `document.querySelector("#new-token").textContent`)
	example := evalJS[string](b, `document.querySelector("#mqtt-example").textContent`)
	if !strings.Contains(example, "-P '"+newTok+"'") || !strings.Contains(example, "devices/th-new/telemetry") {
		t.Errorf("example %q does not use the token and topic", example)
	}
	if out, err := mosquittoPub(t, h, "th-new", newTok, "-q", "1", "-t", "devices/th-new/telemetry", "-m", `{"metrics": {"temperature": 19.5}}`); err != nil {
		t.Fatalf("the shown token does not work: %v %s", err, out)
	}
	b.do(chromedp.Click(chromedp.ID("dialog-done")))
	b.wait("th-new listed", `document.querySelector('#device-list .vrow[data-id="th-new"]') !== null`)

	// Device page: the chart draws, then moves with live data.
	b.do(chromedp.Navigate(base + "/#/devices/th-001"))
	b.wait("the temperature chart", `Number(document.querySelector('.chart[data-metric="temperature"]')?.dataset.points) > 0`)
	last := evalJS[string](b, `document.querySelector('.chart[data-metric="temperature"]').dataset.last`)
	b.wait("the chart to move", fmt.Sprintf(`Number(document.querySelector('.chart[data-metric="temperature"]').dataset.last) > %s`, last))
	b.wait("latest value cards", `document.querySelectorAll("#latest .lcard").length >= 2`)
	b.shot("05-device")
	// A longer range is bucketed on the server: 1h in 5 s steps.
	b.do(chromedp.Click(chromedp.CSS(`#range [data-range="1h"]`)))
	b.wait("1h range", `document.querySelector('.chart[data-metric="temperature"]').dataset.step === "5"`)
	b.do(chromedp.Click(chromedp.CSS(`#range [data-range="15m"]`)))
	b.wait("15m range", `document.querySelector('.chart[data-metric="temperature"]').dataset.step === "1"`)

	// A command, live to succeeded.
	b.set("cmd-name", "set_interval")
	b.set("cmd-params", `{"interval": "400ms"}`)
	b.do(chromedp.Click(chromedp.ID("cmd-send")))
	b.wait("the command to succeed", `document.querySelector('#cmd-ledger tr.cmd-row[data-state="succeeded"]') !== null`)

	// The twin: set desired, see it reported and the delta empty.
	b.set("twin-desired", `{"label": "lobby", "interval": "500ms"}`)
	b.do(chromedp.Click(chromedp.ID("twin-save")))
	b.wait("the twin reported", `document.querySelector("#twin-reported").textContent.includes("lobby") && document.querySelector("#twin-delta").textContent === "in sync"`)
	b.shot("06-device-command-twin")

	// Dead letters: the rejected message; replay fails under the strict type.
	b.do(chromedp.Navigate(base + "/#/deadletters"))
	b.wait("the dead letter", `[...document.querySelectorAll("tr[data-dl]")].some(r => r.textContent.includes("th-bad") && r.textContent.includes("out_of_range"))`)
	b.do(chromedp.Click(chromedp.CSS(`tr[data-dl] button[data-replay]`)))
	b.wait("the failed replay", `document.querySelector("tr[data-dl]")?.textContent.includes("still invalid")`)
	b.shot("07-deadletters")

	// Relax the thermostat type (temperature up to 1000) and restart the
	// hub on the same data and ports; the browser's session is gone with
	// the old process, so it logs in again.
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := h.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	cfg2 := *cfg
	cfg2.Types = relaxedTypes(t, cfg.Types)
	h2 := startHub(t, &cfg2)
	if h2.Addrs().HTTP != h.Addrs().HTTP {
		t.Fatalf("restarted on %s, want %s", h2.Addrs().HTTP, h.Addrs().HTTP)
	}
	// A new URL (not just a new #fragment), so the page loads again.
	b.do(chromedp.Navigate(base + "/?restarted#/deadletters"))
	b.login(admin)
	b.do(chromedp.Click(chromedp.ID("dl-replayed")))
	b.wait("the dead letter again", `document.querySelector("tr[data-dl] button[data-replay]") !== null`)
	b.do(chromedp.Click(chromedp.CSS(`tr[data-dl] button[data-replay]`)))
	b.wait("the replay", `document.querySelector("tr[data-dl] .state-succeeded")?.textContent === "replayed"`)
	b.shot("08-deadletters-replayed")
	b.do(chromedp.Navigate(base + "/#/devices/th-bad"))
	b.wait("the replayed reading", `document.querySelector('#latest .lcard[data-metric="temperature"]')?.textContent.includes("999.5")`)

	// The devices reconnected to the new hub; the overview is live again.
	b.do(chromedp.Navigate(base + "/#/"))
	b.wait("devices back online", `Number(document.querySelector("#card-online .card-value")?.textContent) >= 12`)

	b.do(chromedp.Navigate(base + "/#/tokens"))
	b.wait("the token list", `document.querySelector("table")?.textContent.includes("admin")`)
	b.shot("09-tokens")
	b.do(chromedp.Navigate(base + "/#/help"))
	b.wait("the Grafana recipe", `document.querySelector("#grafana pre")?.textContent.includes("temperature")`)
	b.shot("10-help")

	// Logout ends the session.
	b.do(chromedp.Click(chromedp.ID("logout")))
	b.do(chromedp.WaitVisible(chromedp.ID("token")))
	b.do(chromedp.Navigate(base + "/#/devices"))
	b.do(chromedp.WaitVisible(chromedp.ID("token")))
}

// relaxedTypes copies the device types with the thermostat's temperature
// allowed up to 1000.
func relaxedTypes(t *testing.T, types map[string]*telemetry.DeviceType) map[string]*telemetry.DeviceType {
	t.Helper()
	out := make(map[string]*telemetry.DeviceType, len(types))
	for k, v := range types {
		c := *v
		out[k] = &c
	}
	th := *out["thermostat"]
	th.Metrics = map[string]telemetry.MetricSpec{}
	for k, v := range types["thermostat"].Metrics {
		th.Metrics[k] = v
	}
	hi := 1000.0
	spec := th.Metrics["temperature"]
	spec.Max = &hi
	th.Metrics["temperature"] = spec
	out["thermostat"] = &th
	return out
}

// TestBrowserDeviceList10k measures the device list page with 10,000
// devices in Chromium: time to load the whole list, to jump to the middle
// and to sort. It only reports (no thresholds) and runs only with
// FIELDHUB_MEASURE=1, as it spends a while registering devices.
func TestBrowserDeviceList10k(t *testing.T) {
	if os.Getenv("FIELDHUB_MEASURE") != "1" {
		t.Skip("a measurement: set FIELDHUB_MEASURE=1 to run it")
	}
	b := newBrowser(t)
	h := startHub(t, testConfig(t))
	base := "http://" + h.Addrs().HTTP
	ctx := context.Background()
	start := time.Now()
	for i := range 10_000 {
		id := fmt.Sprintf("dev-%05d", i)
		if _, _, err := h.Registry.CreateDevice(ctx, registry.DeviceSpec{ID: id, Type: []string{"thermostat", "door", "meter"}[i%3],
			Labels: map[string]string{"site": fmt.Sprintf("site-%02d", i%20)}}); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			h.Registry.SetPresence(ctx, id, true, time.Now())
		}
		if i%10 == 0 {
			h.Ingest.Ingest(ctx, id, []byte(`{"metrics": {"temperature": 21.5, "humidity": 40}}`), 0, time.Now())
		}
	}
	t.Logf("registered 10,000 devices in %s", time.Since(start).Round(time.Millisecond))
	b.do(chromedp.Navigate(base + "/"))
	b.login(adminToken(t, h))
	start = time.Now()
	b.do(chromedp.Navigate(base + "/#/devices"))
	b.wait("10,000 devices", `document.querySelector("#device-count")?.textContent === "10000 devices"`)
	t.Logf("list of 10,000 loaded in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	evalJS[bool](b, `(() => { const v = document.querySelector("#device-list"); v.scrollTop = 5000 * 38; v.dispatchEvent(new Event("scroll")); return true })()`)
	b.wait("the middle rows", `document.querySelector('#device-list .vrow[data-id="dev-05000"]') !== null`)
	b.wait("their latest values", `document.querySelector('#device-list .vrow[data-id="dev-05000"] .kv') !== null`)
	t.Logf("jump to the middle, with latest values, in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	b.do(chromedp.Click(chromedp.CSS(".vhead .c-seen")))
	b.wait("sorted by last seen", `document.querySelector(".vhead .c-seen").textContent.includes("▲")`)
	t.Logf("sort 10,000 rows by last seen in %s", time.Since(start).Round(time.Millisecond))
	rows := evalJS[int](b, `document.querySelectorAll("#device-list .vrow").length`)
	t.Logf("rows in the DOM: %d", rows)
	b.shot("11-devices-10k")
}
