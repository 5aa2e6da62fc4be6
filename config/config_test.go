package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fieldhub.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "./data" || c.MQTT.Addr != ":1883" || c.HTTP.Addr != ":8080" || c.Store.Backend != "tsdb" ||
		c.MQTT.ConnectTimeout != 10*time.Second || c.Store.OutOfOrderWindow < time.Hour {
		t.Fatalf("defaults: %+v", c)
	}
	if c.Types["thermostat"] == nil {
		t.Fatal("built-in device types not loaded")
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		env        map[string]string
		want       string
	}{
		{"unknown top key", "mqtt_addr: x\n", nil, "mqtt_addr"},
		{"unknown nested key", "mqtt:\n  tls:\n    certfile: x\n", nil, "mqtt.tls.certfile"},
		{"bad duration", "mqtt:\n  connect_timeout: soon\n", nil, "connect_timeout"},
		{"bad number", "mqtt:\n  max_packet_size: big\n", nil, "max_packet_size"},
		{"out of range", "mqtt:\n  max_packet_size: 10\n", nil, "mqtt.max_packet_size"},
		{"bad backend", "store:\n  backend: sqlite\n", nil, "store.backend"},
		{"bad addr", "http:\n  addr: nope\n", nil, "http.addr"},
		{"tls without cert", "mqtt:\n  tls:\n    addr: \":8883\"\n", nil, "mqtt.tls.cert"},
		{"bad env value", "", map[string]string{"FIELDHUB_STORE_RETENTION": "forever"}, "retention"},
		{"bad log level", "log:\n  level: loud\n", nil, "log.level"},
		{"yaml syntax", "mqtt: [\n", nil, "fieldhub.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			file := ""
			if tc.file != "" {
				file = writeFile(t, tc.file)
			}
			_, err := Load(file, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "mqtt:\n  addr: \":1111\"\nhttp:\n  addr: \":2222\"\ndata_dir: /from/file\n")
	t.Setenv("FIELDHUB_MQTT_ADDR", ":3333")
	t.Setenv("FIELDHUB_DATA_DIR", "/from/env")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	for _, k := range Keys() {
		fs.String(FlagName(k), "", "")
	}
	if err := fs.Parse([]string{"--data-dir", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Addr != ":2222" {
		t.Errorf("file: http.addr = %q", c.HTTP.Addr)
	}
	if c.MQTT.Addr != ":3333" {
		t.Errorf("env over file: mqtt.addr = %q", c.MQTT.Addr)
	}
	if c.DataDir != "/from/flag" {
		t.Errorf("flag over env: data_dir = %q", c.DataDir)
	}
	if c.MQTT.WSAddr != ":1882" {
		t.Errorf("unset flag must not override the default: ws_addr = %q", c.MQTT.WSAddr)
	}
}

func TestDeviceTypesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "types.yaml")
	os.WriteFile(p, []byte("types:\n  probe:\n    unknown_metrics: reject\n    metrics:\n      tempC: {type: number, min: -10, max: 10}\n"), 0o600)
	c, err := Load(writeFile(t, "device_types: "+p+"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Types["probe"].Metrics["tempC"]; !ok {
		t.Fatalf("metric name case not kept: %+v", c.Types["probe"])
	}
	os.WriteFile(p, []byte("types:\n  probe:\n    metrics:\n      t: {type: numbr}\n"), 0o600)
	if _, err := Load(writeFile(t, "device_types: "+p+"\n"), nil); err == nil || !strings.Contains(err.Error(), "types.probe") {
		t.Fatalf("bad metric type: %v", err)
	}
	os.WriteFile(p, []byte("types:\n  probe:\n    metricz: {}\n"), 0o600)
	if _, err := Load(writeFile(t, "device_types: "+p+"\n"), nil); err == nil || !strings.Contains(err.Error(), "metricz") {
		t.Fatalf("unknown field in types file: %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	for _, s := range []string{"", "mqtt:\n  addr: \":1\"\n", "store:\n  backend: influx\n", "a: [1, 2]\n", "mqtt: 3\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(t.TempDir(), "f.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(p, nil)
		if err == nil && (c.DataDir == "" || c.HTTP.Addr == "") {
			t.Fatalf("accepted config with empty required keys: %q", body)
		}
	})
}
