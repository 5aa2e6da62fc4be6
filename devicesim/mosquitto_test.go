package devicesim

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/telemetry"
)

// expectedValue regenerates what a device must have sent for reading seq
// (1-based) at a fixed interval: the signals are a pure function of the
// seed, the device id and the metric.
func expectedSeries(t *testing.T, p *Profile, typ *DeviceType, id string, n int) []map[string]telemetry.Value {
	t.Helper()
	out := make([]map[string]telemetry.Value, n)
	sigs := map[string]Signal{}
	for _, m := range typ.Metrics {
		s, err := NewSignal(m, p.Seed, id)
		if err != nil {
			t.Fatal(err)
		}
		sigs[m.Name] = s
	}
	for i := range n {
		out[i] = map[string]telemetry.Value{}
		for _, m := range typ.Metrics {
			out[i][m.Name] = sigs[m.Name].Next(time.Duration(i) * typ.Interval)
		}
	}
	return out
}

func sameValue(got any, want telemetry.Value) bool {
	switch want.Kind {
	case telemetry.KindNumber:
		f, ok := got.(float64)
		return ok && f == want.Num
	case telemetry.KindBool:
		b, ok := got.(bool)
		return ok && b == want.Bool
	default:
		s, ok := got.(string)
		return ok && s == want.Str
	}
}

const fleetProfile = `
seed: 1234
id_prefix: t-
interval: 40ms
qos: 1
devices:
  - type: thermostat
    count: 3
    metrics:
      temperature: {model: sine, period: 2s, amplitude: 3, offset: 21, noise: 0.2}
      humidity:    {model: random_walk, start: 50, step: 2, min: 20, max: 80, decimals: 1}
      heating:     {model: toggle, probability: 0.3}
      mode:        {model: enum, values: [eco, comfort, off], probability: 0.3}
  - type: meter
    count: 2
    interval: 60ms
    metrics:
      power:   {model: step, steps: [{at: 0s, value: 10}, {at: 200ms, value: 50}], cycle: 400ms}
      voltage: {model: constant, value: 230}
`

// TestProfileRunAgainstMosquitto: every acknowledged reading reaches a
// subscriber, once, in order, with the values the seed dictates.
func TestProfileRunAgainstMosquitto(t *testing.T) {
	mq := startMosquitto(t)
	w := newWatcher(t, mq.URL, "devices/+/telemetry")
	p := testProfile(t, fleetProfile)
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true})

	testkit.Eventually(t, 30*time.Second, func() bool {
		for _, d := range f.Devices() {
			if d.Stats().ReadingsAcked < 15 {
				return false
			}
		}
		return true
	}, "15 acknowledged readings per device")
	f.Stop()
	st := f.Stats()
	if st.Readings != st.ReadingsAcked || st.PublishErrors != 0 || st.Connects != 5 || st.Abandoned != 0 {
		t.Fatalf("stats: %+v", st)
	}
	testkit.Eventually(t, 20*time.Second, func() bool {
		_, bad := received(t, w)
		n := 0
		got, _ := received(t, w)
		for _, rs := range got {
			n += len(rs)
		}
		return bad == 0 && uint64(n) == st.ReadingsAcked
	}, "the subscriber to see every acknowledged reading")

	got, _ := received(t, w)
	for _, spec := range p.Devices() {
		rs := got[spec.ID]
		want := expectedSeries(t, p, spec.Type, spec.ID, len(rs))
		for i, r := range rs {
			if r.Seq != uint64(i+1) {
				t.Fatalf("%s: reading %d has seq %d", spec.ID, i, r.Seq)
			}
			if i > 0 && r.TS < rs[i-1].TS {
				t.Errorf("%s: ts went back at seq %d", spec.ID, r.Seq)
			}
			if len(r.Metrics) != len(spec.Type.Metrics) {
				t.Fatalf("%s seq %d: metrics %v", spec.ID, r.Seq, r.Metrics)
			}
			for name, v := range want[i] {
				if !sameValue(r.Metrics[name], v) {
					t.Errorf("%s seq %d %s: got %v, want %+v", spec.ID, r.Seq, name, r.Metrics[name], v)
				}
			}
		}
	}
}

// TestBufferingThroughDisconnect cuts the device's link (a TCP proxy drops
// it and refuses reconnects for a while); the readings taken meanwhile
// arrive after the reconnect, batched, with their original timestamps.
func TestBufferingThroughDisconnect(t *testing.T) {
	mq := startMosquitto(t)
	px := startProxy(t, mq.Addr)
	w := newWatcher(t, mq.URL, "devices/+/telemetry")
	p := testProfile(t, `
seed: 5
interval: 30ms
batch: 7
backoff: {min: 50ms, max: 200ms, jitter: 0.2}
devices:
  - type: probe
    count: 1
    metrics:
      v: {model: random_walk, step: 1, min: 0, max: 100}
`)
	f := startFleet(t, FleetConfig{Profile: p, Broker: px.url(), Anonymous: true})
	d := f.Devices()[0]
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().ReadingsAcked >= 5 }, "first readings")

	px.setDown(true)
	down := time.Now()
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().ConnectionsLost == 1 }, "the device to notice")
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().Buffered >= 20 }, "readings to be buffered")
	px.setDown(false)
	testkit.Eventually(t, 30*time.Second, func() bool {
		s := d.Stats()
		return s.Connects >= 2 && s.Flushed >= 20 && s.ReadingsAcked >= s.Readings-1
	}, "the flush after reconnecting")
	f.Stop()
	st := d.Stats()
	if st.BufferDropped != 0 || st.Batches < 3 {
		t.Fatalf("stats: %+v", st)
	}

	type seen struct {
		ts      int64
		batched bool
		at      time.Time
	}
	bySeq := map[uint64]seen{}
	testkit.Eventually(t, 20*time.Second, func() bool {
		clear(bySeq)
		for _, m := range w.all() {
			rs, err := DecodeTelemetry(m.payload)
			if err != nil {
				t.Fatalf("bad payload %q", m.payload)
			}
			for _, r := range rs {
				if prev, ok := bySeq[r.Seq]; ok && prev.ts != r.TS {
					// A reading in flight at the cut may arrive twice; it
					// must be the same reading.
					t.Fatalf("seq %d arrived with ts %d and %d", r.Seq, prev.ts, r.TS)
				}
				bySeq[r.Seq] = seen{ts: r.TS, batched: m.payload[0] == '[', at: m.at}
			}
		}
		return uint64(len(bySeq)) == st.Readings
	}, "every reading at the subscriber")

	var batched []uint64
	for seq := uint64(1); seq <= st.Readings; seq++ {
		r, ok := bySeq[seq]
		if !ok {
			t.Fatalf("seq %d missing", seq)
		}
		if seq > 1 && r.ts < bySeq[seq-1].ts {
			t.Errorf("seq %d: ts %d before previous %d", seq, r.ts, bySeq[seq-1].ts)
		}
		if r.batched {
			batched = append(batched, seq)
			// Taken while offline: stamped before it could be delivered.
			if r.ts > r.at.UnixMilli() {
				t.Errorf("seq %d: ts %d after its arrival %d", seq, r.ts, r.at.UnixMilli())
			}
		}
	}
	if uint64(len(batched)) != st.Flushed {
		t.Errorf("%d readings arrived in batches, device flushed %d", len(batched), st.Flushed)
	}
	// The oldest reading flushed after the cut (a reading taken before the
	// first CONNACK may have been flushed at start) keeps the time it was
	// taken: around the cut, long before the flush.
	var first *seen
	for _, seq := range batched {
		if r := bySeq[seq]; r.at.After(down) {
			first = &r
			break
		}
	}
	if first == nil {
		t.Fatal("no batch after the cut")
	}
	if first.ts > down.Add(time.Second).UnixMilli() || first.at.Sub(time.UnixMilli(first.ts)) < 100*time.Millisecond {
		t.Errorf("first buffered reading ts %d (cut at %d) arrived %s later", first.ts, down.UnixMilli(), first.at.Sub(time.UnixMilli(first.ts)))
	}
}

// commander sends commands to a device through mosquitto and reads the
// replies, as the hub would.
type commander struct {
	t  *testing.T
	w  *watcher
	id string
	n  int
}

func (c *commander) send(name, params string, expires time.Time) Reply {
	c.t.Helper()
	c.n++
	cmdID := fmt.Sprintf("c-%d", c.n)
	payload := map[string]any{"id": cmdID, "name": name, "params": json.RawMessage(params)}
	if !expires.IsZero() {
		payload["expires_at"] = expires.Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal(payload)
	c.w.publish(c.t, telemetry.CommandTopic(c.id, name), false, string(b))
	var r Reply
	testkit.Eventually(c.t, 30*time.Second, func() bool {
		ms := c.w.on(telemetry.ReplyTopic(c.id, cmdID))
		if len(ms) == 0 {
			return false
		}
		if err := json.Unmarshal(ms[0].payload, &r); err != nil {
			c.t.Fatalf("reply %s: %v", ms[0].payload, err)
		}
		return true
	}, "the reply to "+name)
	return r
}

func (c *commander) readings() []Telemetry {
	var out []Telemetry
	for _, m := range c.w.on(telemetry.TelemetryTopic(c.id)) {
		rs, err := DecodeTelemetry(m.payload)
		if err != nil {
			c.t.Fatal(err)
		}
		out = append(out, rs...)
	}
	return out
}

func TestCommandsAgainstMosquitto(t *testing.T) {
	mq := startMosquitto(t)
	p := testProfile(t, `
seed: 9
interval: 20ms
devices:
  - type: thermostat
    count: 1
    id_prefix: cmd-
    metrics:
      setpoint: {model: constant, value: 20}
      humidity: {model: random_walk, start: 50, step: 1, min: 0, max: 100}
`)
	id := p.Devices()[0].ID
	w := newWatcher(t, mq.URL, "devices/"+id+"/#")
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true, RebootDelay: 300 * time.Millisecond})
	d := f.Device(id)
	testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().Subscribes == 1 }, "the device to subscribe")
	c := &commander{t: t, w: w, id: id}

	t.Run("set", func(t *testing.T) {
		r := c.send("set", `{"metric":"setpoint","value":25.5}`, time.Time{})
		if r.Status != "ok" || r.Result["metric"] != "setpoint" || r.Result["value"] != 25.5 {
			t.Fatalf("reply %+v", r)
		}
		after := len(c.readings())
		testkit.Eventually(t, 30*time.Second, func() bool {
			rs := c.readings()
			return len(rs) > after+2 && rs[len(rs)-1].Metrics["setpoint"] == 25.5
		}, "readings with the new setpoint")
		for _, bad := range []string{`{"metric":"nope","value":1}`, `{"metric":"setpoint","value":"hot"}`, `{"metric":"humidity","value":500}`, `{"metrik":"x"}`} {
			if r := c.send("set", bad, time.Time{}); r.Status != "error" || r.Error == "" {
				t.Errorf("set %s: reply %+v, want an error", bad, r)
			}
		}
	})

	t.Run("set_interval", func(t *testing.T) {
		r := c.send("set_interval", `{"interval":"300ms"}`, time.Time{})
		if r.Status != "ok" || r.Result["interval"] != "300ms" {
			t.Fatalf("reply %+v", r)
		}
		after := len(c.readings())
		testkit.Eventually(t, 30*time.Second, func() bool { return len(c.readings()) >= after+4 }, "readings at the new interval")
		rs := c.readings()[after:]
		// The first reading after the reply may come from the old
		// timer; after it, readings are at least 300ms apart (timers never
		// fire early; ts is in whole ms).
		for i := 2; i < len(rs); i++ {
			if gap := rs[i].TS - rs[i-1].TS; gap < 299 {
				t.Errorf("readings %d and %d only %dms apart", rs[i-1].Seq, rs[i].Seq, gap)
			}
		}
		if r := c.send("set_interval", `{"interval":"fast"}`, time.Time{}); r.Status != "error" {
			t.Errorf("bad interval accepted: %+v", r)
		}
		c.send("set_interval", `{"interval":"20ms"}`, time.Time{})
	})

	t.Run("fail", func(t *testing.T) {
		if r := c.send("fail", `{"error":"boom"}`, time.Time{}); r.Status != "error" || r.Error != "boom" {
			t.Fatalf("reply %+v", r)
		}
		if r := c.send("fail", `{}`, time.Time{}); r.Status != "error" || r.Error != "simulated failure" {
			t.Fatalf("reply %+v", r)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		r := c.send("selfdestruct", `{}`, time.Time{})
		if r.Status != "error" || !strings.Contains(r.Error, `unknown command "selfdestruct"`) {
			t.Fatalf("reply %+v", r)
		}
	})

	t.Run("expired", func(t *testing.T) {
		r := c.send("set", `{"metric":"setpoint","value":1}`, time.Now().Add(-time.Minute))
		if r.Status != "error" || !strings.Contains(r.Error, "expired") {
			t.Fatalf("reply %+v", r)
		}
		if d.Stats().CommandsExpired != 1 {
			t.Errorf("expired not counted: %+v", d.Stats())
		}
	})

	t.Run("reboot", func(t *testing.T) {
		before := d.Stats()
		r := c.send("reboot", `{}`, time.Time{})
		if r.Status != "ok" || r.Result["delay"] != "300ms" {
			t.Fatalf("reply %+v", r)
		}
		testkit.Eventually(t, 30*time.Second, func() bool {
			s := d.Stats()
			return s.Reboots == 1 && s.Connects == before.Connects+1 && s.Subscribes == before.Subscribes+1
		}, "the device to come back")
		after := len(c.readings())
		testkit.Eventually(t, 30*time.Second, func() bool { return len(c.readings()) > after+3 }, "readings after the reboot")
		rs := c.readings()
		for i := 1; i < len(rs); i++ {
			if rs[i].Seq <= rs[i-1].Seq {
				t.Fatalf("seq not increasing across the reboot: %d then %d", rs[i-1].Seq, rs[i].Seq)
			}
		}
		if s := d.Stats(); s.ConnectionsLost != 0 {
			t.Errorf("a reboot is not a lost connection: %+v", s)
		}
	})

	t.Run("twin", func(t *testing.T) {
		w.publish(t, telemetry.TwinDesiredTopic(id), true, `{"version":3,"desired":{"setpoint":22,"color":"blue","humidity":"wet"}}`)
		t.Cleanup(func() { w.publish(t, telemetry.TwinDesiredTopic(id), true, "") })
		var rep TwinReported
		testkit.Eventually(t, 30*time.Second, func() bool {
			ms := w.on(telemetry.TwinReportedTopic(id))
			if len(ms) == 0 {
				return false
			}
			return json.Unmarshal(ms[len(ms)-1].payload, &rep) == nil
		}, "the reported twin")
		if rep.Version != 3 || string(rep.Reported["setpoint"]) != "22" || string(rep.Reported["color"]) != `"blue"` {
			t.Fatalf("reported %+v", rep)
		}
		if _, ok := rep.Reported["humidity"]; ok {
			t.Errorf("an invalid desired value was reported as applied: %+v", rep)
		}
		testkit.Eventually(t, 30*time.Second, func() bool {
			rs := c.readings()
			return rs[len(rs)-1].Metrics["setpoint"] == 22.0
		}, "readings with the desired setpoint")
	})

	t.Run("errors topic", func(t *testing.T) {
		w.publish(t, telemetry.ErrorsTopic(id), false, `{"reason":"bad_payload"}`)
		testkit.Eventually(t, 30*time.Second, func() bool { return d.Stats().HubErrors == 1 }, "the rejection to be counted")
	})

	s := d.Stats()
	// set: 1 ok + 4 bad; set_interval: 1 ok + 1 bad + 1 ok; fail 2; unknown 1; expired 1; reboot 1.
	if s.CommandsReceived != 13 || s.Replies != 13 || s.ErrorReplies != 9 || s.CommandsInvalid != 0 {
		t.Errorf("command counters: received %d replies %d errors %d invalid %d", s.CommandsReceived, s.Replies, s.ErrorReplies, s.CommandsInvalid)
	}
}

// TestFaultsCountedExactly: what the subscriber sees of each injected
// fault equals the device's counter.
func TestFaultsCountedExactly(t *testing.T) {
	mq := startMosquitto(t)
	w := newWatcher(t, mq.URL, "devices/+/telemetry")
	p := testProfile(t, `
seed: 77
interval: 10ms
faults:
  malformed_pct: 20
  out_of_range_pct: 15
  duplicate_pct: 10
  clock_skew: -1h
  clock_skew_pct: 25
devices:
  - type: sensor
    count: 2
    metrics:
      t: {model: sine, period: 1s, amplitude: 1, offset: 20}
`)
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true})
	testkit.Eventually(t, 60*time.Second, func() bool { return f.Stats().ReadingsAcked >= 200 }, "200 readings")
	f.Stop()
	st := f.Stats()
	if st.Malformed == 0 || st.OutOfRange == 0 || st.Duplicates == 0 || st.Skewed == 0 {
		t.Fatalf("faults not injected: %+v", st)
	}
	var malformed, oor, dups, skewed uint64
	testkit.Eventually(t, 20*time.Second, func() bool {
		malformed, oor, dups, skewed = 0, 0, 0, 0
		seen := map[string]bool{}
		for _, m := range w.all() {
			rs, err := DecodeTelemetry(m.payload)
			if err != nil {
				malformed++
				continue
			}
			for _, r := range rs {
				key := fmt.Sprint(m.topic, r.Seq)
				if seen[key] {
					dups++
				}
				seen[key] = true
				if r.Metrics["t"] == DefaultOutOfRangeValue {
					oor++
				}
				if time.Since(time.UnixMilli(r.TS)) > 30*time.Minute && !seen[key+"skew"] {
					skewed++
					seen[key+"skew"] = true
				}
			}
		}
		t.Logf("seen: malformed %d/%d, out of range %d/%d, duplicates %d/%d, skewed %d/%d", malformed, st.Malformed, oor, st.OutOfRange, dups, st.Duplicates, skewed, st.Skewed)
		return malformed == st.Malformed && oor == st.OutOfRange && dups == st.Duplicates && skewed == st.Skewed
	}, fmt.Sprintf("the subscriber's counts to match the injected faults (stats %+v)", st))
	t.Logf("injected and seen: malformed %d, out of range %d, duplicates %d, skewed %d of %d readings", malformed, oor, dups, skewed, st.Readings)
	if st.ExpectedStored != st.ReadingsAcked-st.Malformed-st.OutOfRange {
		t.Errorf("expected stored %d != acked %d - malformed %d - out of range %d", st.ExpectedStored, st.ReadingsAcked, st.Malformed, st.OutOfRange)
	}
}

// TestDisconnectStorm: storms drop connections (each drop counted, each
// followed by a reconnect) and no reading is lost to them.
func TestDisconnectStorm(t *testing.T) {
	mq := startMosquitto(t)
	w := newWatcher(t, mq.URL, "devices/+/telemetry")
	p := testProfile(t, `
seed: 3
interval: 20ms
backoff: {min: 20ms, max: 100ms, jitter: 0.5}
storm: {every: 300ms, pct: 50}
devices:
  - type: sensor
    count: 4
    metrics:
      t: {model: random_walk, step: 1, min: 0, max: 10}
`)
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true})
	testkit.Eventually(t, 30*time.Second, func() bool { return f.Stats().StormDrops >= 6 }, "three storms")
	testkit.Eventually(t, 30*time.Second, func() bool {
		s := f.Stats()
		return s.ConnectionsLost == s.StormDrops
	}, "every drop to be noticed")
	f.Stop()
	st := f.Stats()
	if st.ConnectionsLost != st.StormDrops || st.Connects < st.StormDrops || st.BufferDropped != 0 {
		t.Errorf("storm drops %d, lost %d, connects %d, buffer dropped %d", st.StormDrops, st.ConnectionsLost, st.Connects, st.BufferDropped)
	}
	if st.Readings != st.ReadingsAcked+st.Abandoned {
		t.Errorf("readings %d != acked %d + abandoned at stop %d", st.Readings, st.ReadingsAcked, st.Abandoned)
	}
	testkit.Eventually(t, 20*time.Second, func() bool {
		got, _ := received(t, w)
		n := 0
		for _, rs := range got {
			seqs := map[uint64]bool{}
			for _, r := range rs {
				seqs[r.Seq] = true
			}
			n += len(seqs)
		}
		// Abandoned readings may have reached the broker with their
		// acknowledgement lost in a drop.
		return uint64(n) >= st.ReadingsAcked && uint64(n) <= st.Readings
	}, "every acknowledged reading despite the storms")
}

// TestSlowConsumer: a slow device handles (and acknowledges) what it
// receives no sooner than its delay, and counts each delayed message.
func TestSlowConsumer(t *testing.T) {
	mq := startMosquitto(t)
	w := newWatcher(t, mq.URL, "devices/#")
	p := testProfile(t, `
seed: 3
interval: 50ms
faults: {slow_consumer: 400ms}
devices:
  - type: sensor
    count: 1
    metrics:
      t: {model: constant, value: 1}
`)
	f := startFleet(t, FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true})
	id := f.Devices()[0].ID()
	testkit.Eventually(t, 30*time.Second, func() bool { return f.Device(id).Stats().Subscribes > 0 }, "a subscription")
	c := &commander{t: t, w: w, id: id}
	for i := 1; i <= 2; i++ {
		sent := time.Now()
		if r := c.send("fail", `{}`, time.Time{}); r.Status != "error" {
			t.Fatalf("reply %+v", r)
		}
		if at := w.on(telemetry.ReplyTopic(id, fmt.Sprintf("c-%d", i)))[0].at; at.Sub(sent) < 400*time.Millisecond {
			t.Errorf("slow consumer replied after %s, before its 400ms delay", at.Sub(sent))
		}
	}
	if s := f.Device(id).Stats(); s.SlowConsumed != 2 {
		t.Errorf("slow consumed %d, want 2", s.SlowConsumed)
	}
}

// TestDelayedStart checks Quiesce and the expectations of a run against a
// plain broker.
func TestRunExpectationsAgainstMosquitto(t *testing.T) {
	mq := startMosquitto(t)
	p := testProfile(t, `
seed: 11
interval: 25ms
faults: {malformed_pct: 10}
devices:
  - type: sensor
    count: 3
    metrics:
      t: {model: constant, value: 1}
expect: [delivered=all, replies=0]
`)
	res, err := Run(t.Context(), RunConfig{
		Fleet:    FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true},
		Duration: 500 * time.Millisecond,
		Settle:   10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Passed || len(res.Outcomes) != 2 || res.Stats.Published == 0 {
		t.Fatalf("run: %s", res.Summary())
	}
	// The stored expectation needs a hub; without one it fails clearly.
	exps, _ := ParseExpectations([]string{"stored=all", "errors>=1"})
	res, err = Run(t.Context(), RunConfig{
		Fleet:    FleetConfig{Profile: p, Broker: mq.URL, Anonymous: true},
		Duration: 300 * time.Millisecond,
		Expect:   exps,
		Settle:   time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Passed || res.Outcomes[0].OK || !strings.Contains(res.Outcomes[0].Error, "needs the hub") || res.Outcomes[1].OK {
		t.Fatalf("want failures: %s", res.Summary())
	}
}

func TestLoadAgainstMosquitto(t *testing.T) {
	mq := startMosquitto(t)
	for _, tc := range []struct {
		name string
		cfg  LoadConfig
	}{
		{"open qos1", LoadConfig{Devices: 20, Rate: 50, QoS: 1}},
		{"open qos0", LoadConfig{Devices: 10, Rate: 50, QoS: 0}},
		{"closed qos1", LoadConfig{Devices: 10, ClosedLoop: true, QoS: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Broker, cfg.Anonymous, cfg.Duration = mq.URL, true, 1500*time.Millisecond
			cfg.IDPrefix = strings.ReplaceAll(tc.name, " ", "-") + "-"
			var progress []LoadProgress
			cfg.Progress = func(p LoadProgress) { progress = append(progress, p) }
			rep, err := RunLoad(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", rep.Text())
			if rep.Connected != cfg.Devices || len(rep.ConnectErrors) != 0 {
				t.Fatalf("connected %d of %d: %v", rep.Connected, cfg.Devices, rep.ConnectErrors)
			}
			if rep.Sent == 0 || rep.Sent != rep.Acked+rep.ErrorCount()+rep.InFlight {
				t.Fatalf("counts do not add up: sent %d != acked %d + errors %d + in flight %d", rep.Sent, rep.Acked, rep.ErrorCount(), rep.InFlight)
			}
			if rep.Latency.Count != rep.Acked {
				t.Errorf("latency samples %d != acked %d", rep.Latency.Count, rep.Acked)
			}
			if !(rep.Latency.P50 <= rep.Latency.P99 && rep.Latency.P99 <= rep.Latency.P999 && rep.Latency.P999 <= rep.Latency.Max) {
				t.Errorf("percentiles out of order: %+v", rep.Latency)
			}
			if len(progress) == 0 {
				t.Errorf("no progress reported")
			}
			if !cfg.ClosedLoop {
				// Open loop: never more than the schedule; a starved
				// sender may end a little short of it, not far.
				due := uint64(cfg.Rate * float64(cfg.Devices) * cfg.Duration.Seconds())
				if got := rep.Sent + rep.Skipped; got < due/2 || got > due+uint64(cfg.Devices) {
					t.Errorf("open loop sent+skipped %d, schedule had %d", got, due)
				}
			}
			b, err := json.Marshal(rep)
			if err != nil || !strings.Contains(string(b), `"p99_9"`) {
				t.Errorf("json: %s, %v", b, err)
			}
		})
	}
}

func TestLoadCountsWhenBrokerDies(t *testing.T) {
	mq := startMosquitto(t)
	done := make(chan *LoadReport, 1)
	go func() {
		rep, err := RunLoad(t.Context(), LoadConfig{Broker: mq.URL, Anonymous: true, Devices: 5, Rate: 100, QoS: 1,
			Duration: 2 * time.Second, Drain: 500 * time.Millisecond, IDPrefix: "dies-"})
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	time.Sleep(800 * time.Millisecond)
	mq.Stop()
	rep := <-done
	if rep == nil {
		return
	}
	t.Logf("\n%s", rep.Text())
	if rep.Sent != rep.Acked+rep.ErrorCount()+rep.InFlight {
		t.Fatalf("counts do not add up: sent %d != acked %d + errors %d + in flight %d", rep.Sent, rep.Acked, rep.ErrorCount(), rep.InFlight)
	}
	if rep.ErrorCount() == 0 || rep.Disconnects != 5 {
		t.Errorf("the broker's death went unnoticed: errors %v, disconnects %d", rep.Errors, rep.Disconnects)
	}
	if rep.Connected != 5 {
		t.Errorf("connected %d", rep.Connected)
	}
}
