package devicesim

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
)

// hubProcess is `fieldhub serve` as a child process on free ports.
type hubProcess struct {
	dataDir string
	mqtt    string // tcp://host:port
	http    string // http://host:port
	cli     *FieldhubCLI
}

func startFieldhub(t *testing.T) *hubProcess {
	t.Helper()
	p := hubproc.Start(t, t.TempDir())
	a := p.Addrs()
	return &hubProcess{dataDir: p.DataDir, mqtt: "tcp://" + a.MQTT, http: "http://" + a.HTTP,
		cli: &FieldhubCLI{Path: hubproc.Build(t), DataDir: p.DataDir}}
}

// api calls the hub's HTTP API with the admin token.
func (h *hubProcess) api(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(h.dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, h.http+path, rd)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode < 300 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func provisionProfile(t *testing.T, h *hubProcess, p *Profile) map[string]string {
	t.Helper()
	creds, err := Provision(t.Context(), p, h.cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "creds.csv")
	if err := WriteCredentials(path, creds); err != nil {
		t.Fatal(err)
	}
	back, err := ReadCredentials(path)
	if err != nil || len(back) != len(p.Devices()) {
		t.Fatalf("credentials: %v, %v", back, err)
	}
	// Provisioning again adds nothing.
	again, err := Provision(t.Context(), p, h.cli, back)
	if err != nil || len(again) != len(back) {
		t.Fatalf("second provision: %d creds, %v", len(again), err)
	}
	return CredentialMap(back)
}

// TestAgainstFieldhubProfileRun: a profile run against `fieldhub serve`
// stores every reading, and the stored values are those the seed dictates.
func TestAgainstFieldhubProfileRun(t *testing.T) {
	h := startFieldhub(t)
	p := testProfile(t, `
seed: 2024
id_prefix: hubsim-
interval: 50ms
devices:
  - type: thermostat
    count: 3
    metrics:
      temperature: {model: sine, period: 3s, amplitude: 4, offset: 21, noise: 0.3}
      humidity:    {model: random_walk, start: 40, step: 1.5, min: 0, max: 100, decimals: 1}
      heating:     {model: toggle, probability: 0.2}
      mode:        {model: enum, values: [eco, comfort, off], probability: 0.1}
`)
	creds := provisionProfile(t, h, p)
	exps, _ := ParseExpectations([]string{"stored=all", "rejected=0", "errors=0", "delivered=all"})
	res, err := Run(t.Context(), RunConfig{
		Fleet:    FleetConfig{Profile: p, Broker: h.mqtt, Credentials: creds},
		Duration: 1500 * time.Millisecond,
		Expect:   exps,
		Hub:      h.cli,
		Settle:   20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res.Summary())
	if !res.Passed || res.Stats.ExpectedStored == 0 || res.Stats.Readings != res.Stats.ReadingsAcked {
		t.Fatalf("run failed:\n%s", res.Summary())
	}

	// Values read back through `fieldhub telemetry query` match the seed.
	for _, spec := range p.Devices() {
		temps, err := h.cli.Series(t.Context(), spec.ID, "temperature", res.Start.Add(-time.Second), res.End.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		heats, err := h.cli.Series(t.Context(), spec.ID, "heating", res.Start.Add(-time.Second), res.End.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if len(temps) == 0 || len(temps) != len(heats) {
			t.Fatalf("%s: %d temperatures, %d heating", spec.ID, len(temps), len(heats))
		}
		want := expectedSeries(t, p, spec.Type, spec.ID, len(temps))
		for i := range temps {
			if temps[i].Value != want[i]["temperature"].Num {
				t.Errorf("%s reading %d: temperature %v, want %v", spec.ID, i+1, temps[i].Value, want[i]["temperature"].Num)
			}
			wantHeat := 0.0
			if want[i]["heating"].Bool {
				wantHeat = 1
			}
			if heats[i].Value != wantHeat || heats[i].TS != temps[i].TS {
				t.Errorf("%s reading %d: heating %v at %d, want %v at %d", spec.ID, i+1, heats[i].Value, heats[i].TS, wantHeat, temps[i].TS)
			}
		}
	}
}

// TestAgainstFieldhubFaults: N malformed messages give exactly N dead
// letters (and N error reports to the device); out-of-range ones likewise.
func TestAgainstFieldhubFaults(t *testing.T) {
	h := startFieldhub(t)
	p := testProfile(t, `
seed: 99
id_prefix: faulty-
interval: 30ms
faults:
  malformed_pct: 15
  out_of_range_pct: 10
  duplicate_pct: 10
devices:
  - type: thermostat
    count: 2
    metrics:
      temperature: {model: sine, period: 2s, amplitude: 2, offset: 20, decimals: 2}
      humidity:    {model: random_walk, start: 50, step: 1, min: 0, max: 100, decimals: 1}
expect: [stored=all, rejected=all, errors=all]
`)
	creds := provisionProfile(t, h, p)
	res, err := Run(t.Context(), RunConfig{
		Fleet:    FleetConfig{Profile: p, Broker: h.mqtt, Credentials: creds},
		Duration: 2 * time.Second,
		Hub:      h.cli,
		Settle:   20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", res.Summary())
	st := res.Stats
	if !res.Passed || st.Malformed == 0 || st.OutOfRange == 0 || st.Duplicates == 0 {
		t.Fatalf("run failed or injected nothing:\n%s", res.Summary())
	}
	dls, err := h.cli.DeadLetters(t.Context(), "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	byReason := map[string]uint64{}
	for _, dl := range dls {
		byReason[dl.Reason]++
	}
	if byReason["bad_payload"] != st.Malformed || byReason["out_of_range"] != st.OutOfRange || uint64(len(dls)) != st.Malformed+st.OutOfRange {
		t.Errorf("dead letters by reason %v; injected malformed %d, out of range %d", byReason, st.Malformed, st.OutOfRange)
	}
}

// TestAgainstFieldhubCommands: commands sent through the hub's ledger
// (HTTP API) reach the simulated device and end in the state its reply
// says; a desired twin set through the API is applied and reported.
func TestAgainstFieldhubCommands(t *testing.T) {
	h := startFieldhub(t)
	p := testProfile(t, `
seed: 5
id_prefix: cmdsim-
interval: 100ms
devices:
  - type: thermostat
    count: 1
    metrics:
      setpoint: {model: constant, value: 20}
`)
	creds := provisionProfile(t, h, p)
	f := startFleet(t, FleetConfig{Profile: p, Broker: h.mqtt, Credentials: creds, RebootDelay: 200 * time.Millisecond})
	id := p.Devices()[0].ID
	d := f.Device(id)
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().Subscribes == 1 }, "the device to subscribe")

	type cmdView struct {
		ID     string          `json:"id"`
		State  string          `json:"state"`
		Result json.RawMessage `json:"result"`
		Error  string          `json:"error"`
	}
	send := func(name, params string) cmdView {
		t.Helper()
		var c cmdView
		code := h.api(t, "POST", "/api/v1/devices/"+id+"/commands", map[string]any{"name": name, "params": json.RawMessage(params), "timeout": "20s"}, &c)
		if code != http.StatusCreated {
			t.Fatalf("send %s: HTTP %d", name, code)
		}
		testkit.Eventually(t, 30*time.Second, func() bool {
			c.Result = nil
			h.api(t, "GET", "/api/v1/commands/"+c.ID, nil, &c)
			return c.State == "succeeded" || c.State == "failed" || c.State == "expired"
		}, "command "+name+" to finish")
		t.Logf("%s %s: %s result=%s error=%q", name, params, c.State, c.Result, c.Error)
		return c
	}
	if c := send("set", `{"metric":"setpoint","value":23}`); c.State != "succeeded" {
		t.Errorf("set: %+v", c)
	}
	if c := send("set_interval", `{"interval":"150ms"}`); c.State != "succeeded" {
		t.Errorf("set_interval: %+v", c)
	}
	if c := send("fail", `{"error":"boom"}`); c.State != "failed" || !strings.Contains(c.Error, "boom") {
		t.Errorf("fail: %+v", c)
	}
	if c := send("warp", `{}`); c.State != "failed" || !strings.Contains(c.Error, "unknown command") {
		t.Errorf("unknown: %+v", c)
	}
	if c := send("reboot", `{}`); c.State != "succeeded" {
		t.Errorf("reboot: %+v", c)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().Connects == 2 }, "the device to come back after its reboot")
	testkit.Eventually(t, 30*time.Second, func() bool {
		pts, err := h.cli.Series(t.Context(), id, "setpoint", time.Now().Add(-time.Minute), time.Now().Add(time.Minute))
		return err == nil && len(pts) > 0 && pts[len(pts)-1].Value == 23
	}, "the new setpoint in the store")

	// Twin: the device applies the desired state and reports it, so the
	// hub's delta empties (the hub numbers reported versions itself).
	var td struct {
		Version int64 `json:"version"`
	}
	if code := h.api(t, "PUT", "/api/v1/devices/"+id+"/twin/desired", map[string]any{"setpoint": 24, "color": "blue"}, &td); code != http.StatusOK {
		t.Fatalf("set desired: HTTP %d", code)
	}
	var tv struct {
		Reported struct {
			Doc     map[string]any `json:"doc"`
			Version int64          `json:"version"`
		} `json:"reported"`
		Delta map[string]json.RawMessage `json:"delta"`
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		tv.Reported.Doc, tv.Delta = nil, nil // Decode merges into maps
		h.api(t, "GET", "/api/v1/devices/"+id+"/twin", nil, &tv)
		if tv.Reported.Version > 0 && len(tv.Delta) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for the reported twin to catch up: desired v%d; twin %+v; device %+v", td.Version, tv, d.Stats())
		}
	}
	if tv.Reported.Doc["setpoint"] != 24.0 || tv.Reported.Doc["color"] != "blue" {
		t.Errorf("reported %+v", tv.Reported)
	}
	testkit.Eventually(t, 30*time.Second, func() bool {
		pts, err := h.cli.Series(t.Context(), id, "setpoint", time.Now().Add(-time.Minute), time.Now().Add(time.Minute))
		return err == nil && len(pts) > 0 && pts[len(pts)-1].Value == 24
	}, "the desired setpoint in the store")
}
