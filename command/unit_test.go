package command

import (
	"encoding/json"
	"testing"
)

func TestMatchFilter(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"devices/d/commands/#", "devices/d/commands/reboot", true},
		{"devices/d/commands/+", "devices/d/commands/reboot", true},
		{"devices/d/commands/reboot", "devices/d/commands/reboot", true},
		{"devices/d/commands/reboot", "devices/d/commands/stop", false},
		{"devices/d/#", "devices/d/commands/x", true},
		{"devices/d/commands/#", "devices/d/commands", true}, // [MQTT-4.7.1-2]
		{"devices/d/commands/#", "devices/e/commands/x", false},
		{"devices/d/twin/desired", "devices/d/twin/desired", true},
		{"devices/d/twin/desired", "devices/d/twin/desired/x", false},
		{"devices/d/+", "devices/d/twin/desired", false},
		{"#", "devices/d/twin/desired", true},
	} {
		if got := MatchFilter(tc.filter, tc.topic); got != tc.want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		in      string
		ok      bool
		status  string
		result  string
		errText string
	}{
		{`{"status": "ok", "result": {"a": 1}}`, true, "ok", `{"a": 1}`, ""},
		{`{"status": "ok", "result": null}`, true, "ok", "", ""},
		{`{"status": "error", "error": "boom"}`, true, "error", "", "boom"},
		{`{"status": "ok", "extra": 1}`, true, "ok", "", ""},
		{`{"status": "OK"}`, false, "", "", ""},
		{`{}`, false, "", "", ""},
		{`null`, false, "", "", ""},
		{`"ok"`, false, "", "", ""},
		{`{"status": "ok"} {}`, false, "", "", ""},
		{``, false, "", "", ""},
	} {
		r, err := ParseReply([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("ParseReply(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (r.Status != tc.status || string(r.Result) != tc.result || r.Error != tc.errText) {
			t.Errorf("ParseReply(%q) = %+v", tc.in, r)
		}
	}
}

func TestParseReported(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"version": 3, "reported": {"a": 1}}`, `{"a": 1}`},
		{`{"reported": {"a": 1}}`, `{"a": 1}`},
		{`{"a": 1}`, `{"a": 1}`},
		{`{"reported": {"a": 1}, "other": 2}`, `{"reported": {"a": 1}, "other": 2}`}, // not an envelope
		{`{"version": "x", "reported": {"a": 1}}`, `{"version": "x", "reported": {"a": 1}}`},
		{`{"reported": 5}`, `{"reported": 5}`},
		{`[1]`, ``},
		{`"x"`, ``},
		{`{"a":`, ``},
	} {
		got, err := ParseReported([]byte(tc.in))
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseReported(%q) = %s, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("ParseReported(%q) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestDelta(t *testing.T) {
	for _, tc := range []struct {
		desired, reported string
		keys              []string
	}{
		{`{}`, `{}`, nil},
		{`{"a": 1}`, `{}`, []string{"a"}},
		{`{"a": 1}`, `{"a": 1.0}`, nil},
		{`{"a": 1, "b": "x"}`, `{"a": 2, "b": "x", "c": true}`, []string{"a"}},
		{`{"o": {"x": [1, 2]}}`, `{"o": {"x": [1, 2]}}`, nil},
		{`{"o": {"x": [1, 2]}}`, `{"o": {"x": [2, 1]}}`, []string{"o"}},
		{`{"n": null}`, `{}`, []string{"n"}},
		{`{"n": null}`, `{"n": null}`, nil},
	} {
		d, err := Delta(json.RawMessage(tc.desired), json.RawMessage(tc.reported))
		if err != nil {
			t.Fatalf("Delta(%s, %s): %v", tc.desired, tc.reported, err)
		}
		if len(d) != len(tc.keys) {
			t.Errorf("Delta(%s, %s) = %v, want keys %v", tc.desired, tc.reported, d, tc.keys)
			continue
		}
		for _, k := range tc.keys {
			if _, ok := d[k]; !ok {
				t.Errorf("Delta(%s, %s) = %v, want keys %v", tc.desired, tc.reported, d, tc.keys)
			}
		}
	}
}

func TestValidateName(t *testing.T) {
	for name, ok := range map[string]bool{
		"reboot": true, "set-level_2.v1:x": true, "": false, "a/b": false, "a+": false, "#": false,
		"a b": false, "a\x00": false, "$sys": false,
	} {
		if err := ValidateName(name); (err == nil) != ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}
