package broker

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

func TestAllowed(t *testing.T) {
	cases := []struct {
		topic           string
		pub, read, will bool
	}{
		{"devices/dev-a/telemetry", true, false, true},
		{"devices/dev-a/replies/cmd-1", true, false, true},
		{"devices/dev-a/twin/reported", true, false, true},
		{"devices/dev-a/commands/#", false, true, false},
		{"devices/dev-a/commands/reboot", false, true, false},
		{"devices/dev-a/twin/desired", false, true, false},
		{"devices/dev-a/errors", false, true, false},
		// other devices
		{"devices/dev-b/telemetry", false, false, false},
		{"devices/dev-b/commands/#", false, false, false},
		{"devices/dev-b/twin/desired", false, false, false},
		// wildcards beyond the allowed filter
		{"#", false, false, false},
		{"+", false, false, false},
		{"devices/#", false, false, false},
		{"devices/+/telemetry", false, false, false},
		{"devices/+/commands/#", false, false, false},
		{"devices/dev-a/#", false, false, false},
		{"devices/dev-a/+", false, false, false},
		{"devices/dev-a/commands/+", false, false, false},
		{"devices/dev-a/replies/#", false, false, false},
		{"devices/dev-a/twin/#", false, false, false},
		{"+/dev-a/telemetry", false, false, false},
		// system and shared
		{"$SYS/#", false, false, false},
		{"$SYS/broker/clients/connected", false, false, false},
		{"$share/g/devices/dev-a/commands/#", false, false, false},
		{"$share/g/devices/dev-a/telemetry", false, false, false},
		// outside the contract
		{"", false, false, false},
		{"devices/dev-a", false, false, false},
		{"devices/dev-a/", false, false, false},
		{"devices/dev-a/telemetry/x", false, false, false},
		{"Devices/dev-a/telemetry", false, false, false},
		{"/devices/dev-a/telemetry", false, false, false},
		{"devices//telemetry", false, false, false},
		{"devices/dev-a/commands/", false, false, false},
		{"devices/dev-a/replies/", false, false, false},
		{"devices/dev-a/other", false, false, false},
	}
	for _, c := range cases {
		for _, a := range []struct {
			act  action
			want bool
		}{{actPublish, c.pub}, {actRead, c.read}, {actWill, c.will}} {
			if got := allowed("dev-a", c.topic, a.act); got != a.want {
				t.Errorf("allowed(dev-a, %q, %s) = %v, want %v", c.topic, a.act, got, a.want)
			}
		}
	}
	// A client whose id is no valid device id gets nothing.
	for _, id := range []string{"", "+", "#", "a/b", "$SYS"} {
		for _, act := range []action{actPublish, actRead, actWill} {
			if allowed(id, "devices/"+id+"/telemetry", act) || allowed(id, "devices/"+id+"/commands/#", act) {
				t.Errorf("allowed for invalid device id %q", id)
			}
		}
	}
}

// FuzzACL checks the ACL's invariants on arbitrary device ids and topics:
// it never allows a topic of another device, never '+', '#' only as the
// device's own commands/# subscription, never $-topics, and nothing to
// publish that a device may not publish.
func FuzzACL(f *testing.F) {
	for _, s := range []struct{ dev, topic string }{
		{"dev-a", "devices/dev-a/telemetry"},
		{"dev-a", "devices/dev-a/commands/#"},
		{"dev-a", "devices/dev-a/commands/reboot"},
		{"dev-a", "devices/dev-a/replies/42"},
		{"dev-a", "devices/dev-a/twin/desired"},
		{"dev-a", "devices/dev-a/twin/reported"},
		{"dev-a", "devices/dev-a/errors"},
		{"dev-a", "devices/dev-b/telemetry"},
		{"dev-a", "devices/+/telemetry"},
		{"dev-a", "#"},
		{"dev-a", "$SYS/#"},
		{"dev-a", "$share/g/devices/dev-a/commands/#"},
		{"dev-a", "devices/dev-a/commands/+"},
		{"dev-a", "devices/dev-a/#"},
		{"+", "devices/+/telemetry"},
		{"#", "devices/#/commands/#"},
		{"a:b.c_d", "devices/a:b.c_d/replies/x\x00y"},
		{"dev-a", "devices/dev-a/commands/\xff"},
	} {
		for act := range uint8(3) {
			f.Add(s.dev, s.topic, act)
		}
	}
	f.Fuzz(func(t *testing.T, device, topic string, a uint8) {
		act := action(a % 3)
		if !allowed(device, topic, act) {
			return
		}
		own := "devices/" + device + "/"
		switch {
		case telemetry.ValidateDeviceID(device) != nil:
			t.Fatalf("allowed for invalid device id %q", device)
		case telemetry.ParseTopic(topic).Device != device:
			t.Fatalf("device %q allowed %q of device %q", device, topic, telemetry.ParseTopic(topic).Device)
		case !strings.HasPrefix(topic, own):
			t.Fatalf("device %q allowed %q outside its namespace", device, topic)
		case strings.Contains(topic, "+"), strings.HasPrefix(topic, "$"), strings.Contains(topic, "\x00"):
			t.Fatalf("device %q allowed %q", device, topic)
		case strings.Contains(topic, "#") && (act != actRead || topic != own+"commands/#"):
			t.Fatalf("device %q allowed wildcard %q for %s", device, topic, act)
		case strings.Count(topic, "/") > 3:
			t.Fatalf("device %q allowed deep topic %q", device, topic)
		}
		k := telemetry.ParseTopic(topic).Kind
		if act == actRead && k != telemetry.TopicCommandFilter && k != telemetry.TopicCommand &&
			k != telemetry.TopicTwinDesired && k != telemetry.TopicErrors {
			t.Fatalf("device %q may read %q (kind %d)", device, topic, k)
		}
		if act != actRead && k != telemetry.TopicTelemetry && k != telemetry.TopicReply && k != telemetry.TopicTwinReported {
			t.Fatalf("device %q may publish %q (kind %d)", device, topic, k)
		}
	})
}

// TestSubscribeDenied: forbidden filters get SUBACK 0x87 (MQTT 5) or 0x80
// (3.1.1); the device's own filters are granted.
func TestSubscribeDenied(t *testing.T) {
	ev := &events{}
	e := newEnv(t, Config{}, func(b *Broker) { b.AddObserver(ev) })
	denied := []string{
		"#", "+/+/+", "devices/#", "devices/+/telemetry", "devices/+/commands/#",
		"devices/dev-b/commands/#", "devices/dev-b/twin/desired", "devices/dev-a/telemetry",
		"devices/dev-a/#", "$SYS/#", "$share/g/devices/dev-a/commands/#",
	}
	granted := []string{"devices/dev-a/commands/#", "devices/dev-a/commands/reboot", "devices/dev-a/twin/desired", "devices/dev-a/errors"}
	for _, v := range []byte{4, 5} {
		rc := e.rawDevice("dev-a", v)
		before := e.counter(e.b.m.aclDenied.WithLabelValues("subscribe"))
		codes := rc.subscribe(7, append(append([]string{}, denied...), granted...)...)
		want := byte(0x87)
		if v == 4 {
			want = 0x80
		}
		for i, f := range denied {
			if codes[i] != want {
				t.Errorf("v%d: SUBACK for %q: %#x, want %#x", v, f, codes[i], want)
			}
		}
		for i, f := range granted {
			if c := codes[len(denied)+i]; c != 1 {
				t.Errorf("v%d: SUBACK for %q: %#x, want granted QoS 1", v, f, c)
			}
		}
		if got := e.counter(e.b.m.aclDenied.WithLabelValues("subscribe")) - before; int(got) != len(denied) {
			t.Errorf("v%d: acl_denied{subscribe} rose by %v, want %d", v, got, len(denied))
		}
		if err := rc.ping(); err != nil {
			t.Fatalf("v%d: connection after denied subscribe: %v", v, err)
		}
		rc.c.Close()
	}
	// DeviceSubscribed fired for the granted filters only.
	eventually(t, "DeviceSubscribed", func() bool { return len(ev.with("subscribed ")) == 2*len(granted) })
	for _, s := range ev.with("subscribed ") {
		if !strings.HasPrefix(s, "subscribed dev-a devices/dev-a/") || strings.Contains(s, "telemetry") {
			t.Errorf("DeviceSubscribed(%s)", s)
		}
	}

	// mosquitto_sub reports the refusal too.
	host, port := hostPort(t, e.addr)
	_, stderr, err := runTool(t, "mosquitto_sub", "-h", host, "-p", port, "-V", "mqttv5", "-i", "dev-b", "-u", "dev-b",
		"-P", e.tokens["dev-b"], "-t", "#", "-C", "1", "-W", "5")
	if !strings.Contains(stderr, "All subscription requests were denied") {
		t.Fatalf("mosquitto_sub -t '#': %v, stderr %q; want the subscription denied", err, stderr)
	}
}

// TestNoMessagesFromOtherDevices: a device receives nothing, retained or
// live, published on another device's topics, while its own retained
// twin reaches it.
func TestNoMessagesFromOtherDevices(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	// Retained state of dev-b, and dev-b's own (retain flag is stripped
	// from device publishes, so this must not be kept either).
	if err := e.b.Publish("devices/dev-b/twin/desired", []byte("b-desired"), PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Publish("devices/dev-b/commands/reboot", []byte("b-cmd"), PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Publish("devices/dev-a/twin/desired", []byte("a-desired"), PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	b := e.rawDevice("dev-b", 4)
	b.write(publishPacket(4, "devices/dev-b/telemetry", []byte("b-telemetry"), 0, 0, true))

	a := e.rawDevice("dev-a", 5)
	codes := a.subscribe(1, "#", "devices/+/twin/desired", "devices/dev-b/#", "devices/dev-b/twin/desired",
		"devices/dev-b/commands/#", "devices/+/telemetry", "devices/dev-a/twin/desired")
	if !bytes.Equal(codes, []byte{0x87, 0x87, 0x87, 0x87, 0x87, 0x87, 1}) {
		t.Fatalf("SUBACK codes %x", codes)
	}
	p := a.parsePublish(a.read())
	if p.topic != "devices/dev-a/twin/desired" || string(p.payload) != "a-desired" || !p.retain {
		t.Fatalf("got %+v, want dev-a's retained twin", p)
	}
	a.write([]byte{pPuback << 4, 2, byte(p.id >> 8), byte(p.id)})
	// Live messages on dev-b's topics do not reach dev-a either.
	if err := e.b.Publish("devices/dev-b/commands/x", []byte("b-live"), PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	b.write(publishPacket(4, "devices/dev-b/twin/reported", []byte("b-reported"), 0, 0, false))
	a.noPacket(500 * time.Millisecond)
}

// TestPublishOtherDeviceDenied: a device cannot publish to another
// device's topics or to hub-to-device topics; the handler never sees such
// a message and no subscriber receives it.
func TestPublishOtherDeviceDenied(t *testing.T) {
	rec := &recorder{}
	e := newEnv(t, Config{}, handleAll(rec))
	victim := e.rawDevice("dev-b", 4)
	if codes := victim.subscribe(1, "devices/dev-b/commands/#", "devices/dev-b/twin/desired", "devices/dev-b/errors"); !bytes.Equal(codes, []byte{1, 1, 1}) {
		t.Fatalf("SUBACK %x", codes)
	}
	forbidden := []string{
		"devices/dev-b/telemetry", "devices/dev-b/replies/1", "devices/dev-b/twin/reported",
		"devices/dev-b/commands/reboot", "devices/dev-b/twin/desired", "devices/dev-b/errors",
		"devices/dev-a/commands/reboot", "devices/dev-a/twin/desired", "devices/dev-a/errors", "other/topic",
	}
	before := e.counter(e.b.m.aclDenied.WithLabelValues("publish"))
	// MQTT 5, QoS 1: PUBACK 0x87 not authorized, connection stays.
	a5 := e.rawDevice("dev-a", 5)
	for i, topic := range forbidden {
		id := uint16(i + 1)
		a5.write(publishPacket(5, topic, []byte("evil"), 1, id, false))
		gotID, code := pubackOf(t, a5.read())
		if gotID != id || code != 0x87 {
			t.Errorf("v5 publish to %q: PUBACK id %d code %#x, want 0x87", topic, gotID, code)
		}
	}
	// QoS 0: dropped silently.
	for _, topic := range forbidden {
		a5.write(publishPacket(5, topic, []byte("evil0"), 0, 0, false))
	}
	if err := a5.ping(); err != nil {
		t.Fatal(err)
	}
	// MQTT 3.1.1, QoS 1: no negative PUBACK exists, so the client is
	// disconnected (without a DISCONNECT packet, which 3.1.1 servers do
	// not send).
	a3 := e.rawDevice("dev-c", 4)
	a3.write(publishPacket(4, "devices/dev-b/commands/reboot", []byte("evil3"), 1, 1, false))
	if got := a3.closed(); len(got) != 0 {
		t.Errorf("v3 client got %d packets before being disconnected", len(got))
	}
	want := float64(2*len(forbidden) + 1)
	if got := e.counter(e.b.m.aclDenied.WithLabelValues("publish")) - before; got != want {
		t.Errorf("acl_denied{publish} rose by %v, want %v", got, want)
	}
	victim.noPacket(500 * time.Millisecond)
	if msgs := rec.all(); len(msgs) != 0 {
		t.Fatalf("handler saw denied messages: %+v", msgs)
	}
	// The allowed topic still works on the same connection.
	a5.write(publishPacket(5, "devices/dev-a/telemetry", []byte("ok"), 1, 99, false))
	if id, code := pubackOf(t, a5.read()); id != 99 || code != 0 {
		t.Fatalf("own telemetry: PUBACK id %d code %#x", id, code)
	}
	if msgs := rec.all(); len(msgs) != 1 || string(msgs[0].Payload) != "ok" {
		t.Fatalf("handler saw %+v", msgs)
	}
}

// TestWillForbiddenTopic: a will on another device's command topic is
// dropped at CONNECT and never delivered, though that device may read the
// topic.
func TestWillForbiddenTopic(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	victim := e.rawDevice("dev-b", 5)
	if codes := victim.subscribe(1, "devices/dev-b/commands/#"); !bytes.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %x", codes)
	}
	before := e.counter(e.b.m.aclDenied.WithLabelValues("will"))
	for _, v := range []byte{4, 5} {
		rc := dialRaw(t, e.addr, v)
		code := rc.connect(connectOpts{ClientID: "dev-a", User: strp("dev-a"), Pass: strp(e.tokens["dev-a"]),
			WillTopic: "devices/dev-b/commands/reboot", WillPayload: "evil will"})
		if code != 0 {
			t.Fatalf("connect with forbidden will: code %#x (the will is dropped, the device may connect)", code)
		}
		// An abrupt close triggers the will [MQTT-3.1.2-8].
		rc.c.Close()
		eventually(t, "dev-a offline", func() bool { return !e.b.Connected("dev-a") })
	}
	if got := e.counter(e.b.m.aclDenied.WithLabelValues("will")) - before; got != 2 {
		t.Errorf("acl_denied{will} rose by %v, want 2", got)
	}
	victim.noPacket(500 * time.Millisecond)
	// Control: the hub's own message on that topic does arrive.
	if err := e.b.Publish("devices/dev-b/commands/reboot", []byte("real"), PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if p := victim.parsePublish(victim.read()); string(p.payload) != "real" {
		t.Fatalf("got %+v", p)
	}
}
