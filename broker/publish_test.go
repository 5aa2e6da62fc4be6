package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestWebSocket: paho over ws://host:port/mqtt carries a real session:
// subscribe, receive a hub publish, publish telemetry.
func TestWebSocket(t *testing.T) {
	rec := &recorder{}
	e := newEnv(t, Config{WSAddr: "127.0.0.1:0"}, handleAll(rec))
	ws := e.b.Addrs().WS
	if ws == "" {
		t.Fatal("no WebSocket address")
	}
	for _, path := range []string{"/mqtt", "/"} {
		t.Run(path, func(t *testing.T) {
			c, err := pahoClient(t, "ws://"+ws+path, "dev-a", e.tokens["dev-a"])
			if err != nil {
				t.Fatalf("paho over WebSocket: %v", err)
			}
			got := make(chan paho.Message, 1)
			if tk := c.Subscribe("devices/dev-a/commands/#", 1, func(_ paho.Client, m paho.Message) { got <- m }); !tk.WaitTimeout(waitFor) || tk.Error() != nil {
				t.Fatalf("subscribe: %v", tk.Error())
			}
			payload := "reboot via " + path
			if err := e.b.Publish("devices/dev-a/commands/reboot", []byte(payload), PublishOptions{QoS: 1}); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-got:
				if m.Topic() != "devices/dev-a/commands/reboot" || string(m.Payload()) != payload || m.Qos() != 1 {
					t.Fatalf("got %s %q qos %d", m.Topic(), m.Payload(), m.Qos())
				}
			case <-time.After(waitFor):
				t.Fatal("no message over WebSocket")
			}
			if tk := c.Publish("devices/dev-a/telemetry", 1, false, "ws "+path); !tk.WaitTimeout(waitFor) || tk.Error() != nil {
				t.Fatalf("publish: %v", tk.Error())
			}
			eventually(t, "WebSocket publish handled", func() bool {
				for _, m := range rec.all() {
					if string(m.Payload) == "ws "+path {
						return true
					}
				}
				return false
			})
		})
	}
	// Wrong token over WebSocket is refused like over TCP.
	if _, err := pahoClient(t, "ws://"+ws+"/mqtt", "dev-b", "wrong"); err == nil || !strings.Contains(err.Error(), "bad user name or password") {
		t.Fatalf("paho with a wrong token over WebSocket: %v", err)
	}
	// A WebSocket that never sends CONNECT is closed by the deadline too.
	e2 := newEnv(t, Config{WSAddr: "127.0.0.1:0", ConnectTimeout: time.Second}, nil)
	rc := dialRaw(t, e2.b.Addrs().WS, 4)
	rc.write([]byte("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"))
	status, err := rc.r.ReadString('\n')
	if err != nil || !strings.Contains(status, "101") {
		t.Fatalf("upgrade: %q %v", status, err)
	}
	rc.closed()
	eventually(t, "ws connect_timeout counted", func() bool {
		return e2.counter(e2.b.m.closed.WithLabelValues("connect_timeout")) == 1
	})
}

// TestPublishProperties: the hub's MQTT 5 properties reach mosquitto_sub
// -V 5 and a raw MQTT 5 subscriber; a 3.1.1 subscriber gets the payload.
func TestPublishProperties(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	sub5 := e.startSub("dev-a", "-V", "mqttv5", "-t", "devices/dev-a/commands/#", "-q", "1", "-F", "%t|%p|%R|%D|%E|%C|%q")
	sub3 := e.startSub("dev-b", "-V", "mqttv311", "-t", "devices/dev-b/commands/#", "-q", "1", "-F", "%t|%p|%q")
	raw := e.rawDevice("dev-c", 5)
	if codes := raw.subscribe(1, "devices/dev-c/commands/#"); !bytes.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %x", codes)
	}

	opts := func(id string) PublishOptions {
		return PublishOptions{QoS: 1, ResponseTopic: "devices/" + id + "/replies/c-17", CorrelationData: []byte("c-17"),
			MessageExpiry: 90 * time.Second, ContentType: "application/json"}
	}
	payload := `{"id":"c-17","params":{"delay":5}}`
	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		if err := e.b.Publish("devices/"+id+"/commands/reboot", []byte(payload), opts(id)); err != nil {
			t.Fatal(err)
		}
	}

	f := strings.Split(recvLine(t, sub5), "|")
	if len(f) != 7 || f[0] != "devices/dev-a/commands/reboot" || f[1] != payload || f[2] != "devices/dev-a/replies/c-17" ||
		f[3] != "c-17" || f[5] != "application/json" || f[6] != "1" {
		t.Fatalf("mosquitto_sub -V 5 got %q", f)
	}
	if exp, err := strconv.Atoi(f[4]); err != nil || exp < 85 || exp > 90 {
		t.Fatalf("message expiry %q, want about 90", f[4])
	}
	if l := recvLine(t, sub3); l != "devices/dev-b/commands/reboot|"+payload+"|1" {
		t.Fatalf("mosquitto_sub -V 3.1.1 got %q", l)
	}
	p := raw.parsePublish(raw.read())
	if string(p.props[propRespTop]) != "devices/dev-c/replies/c-17" || string(p.props[propCorrData]) != "c-17" ||
		string(p.props[propCType]) != "application/json" || len(p.props[propExpiry]) != 4 ||
		binary.BigEndian.Uint32(p.props[propExpiry]) > 90 || p.qos != 1 || string(p.payload) != payload {
		t.Fatalf("raw MQTT 5 subscriber got %+v", p)
	}

	// Bad arguments are refused with an error.
	for _, c := range []struct {
		topic string
		opts  PublishOptions
	}{
		{"", PublishOptions{}},
		{"devices/+/commands/x", PublishOptions{}},
		{"devices/#", PublishOptions{}},
		{"devices/dev-a/commands/x", PublishOptions{QoS: 3}},
		{"devices/dev-a/commands/x", PublishOptions{ResponseTopic: "devices/+/replies/x"}},
		{"devices/dev-a/commands/x", PublishOptions{MessageExpiry: -time.Second}},
	} {
		if err := e.b.Publish(c.topic, nil, c.opts); err == nil {
			t.Errorf("Publish(%q, %+v) succeeded", c.topic, c.opts)
		}
	}
}

// TestRetainedPublish: a retained hub publish (twin/desired) reaches later
// subscribers, the latest one wins, and an empty retained payload clears it.
func TestRetainedPublish(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	host, port := hostPort(t, e.addr)
	topic := "devices/dev-a/twin/desired"
	for i := 1; i <= 2; i++ {
		if err := e.b.Publish(topic, []byte(fmt.Sprintf(`{"version":%d}`, i)), PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ver := range []string{"mqttv311", "mqttv5"} {
		out, stderr, err := runTool(t, "mosquitto_sub", "-h", host, "-p", port, "-V", ver, "-i", "dev-a", "-u", "dev-a",
			"-P", e.tokens["dev-a"], "-t", topic, "-q", "1", "-C", "1", "-W", "10", "-F", "%t|%p|%r")
		if err != nil {
			t.Fatalf("mosquitto_sub %s: %v: %s", ver, err, stderr)
		}
		if want := topic + `|{"version":2}|1`; strings.TrimSpace(out) != want {
			t.Fatalf("%s: got %q, want %q", ver, out, want)
		}
	}
	if err := e.b.Publish(topic, nil, PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	rc := e.rawDevice("dev-a", 4)
	if codes := rc.subscribe(1, topic); !bytes.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %x", codes)
	}
	rc.noPacket(300 * time.Millisecond)
}
