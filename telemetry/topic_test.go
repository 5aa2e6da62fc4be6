package telemetry

import "testing"

func TestValidateDeviceID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"sensor-1", true},
		{"a.b_c:d", true},
		{"", false},
		{".hidden", false},
		{"$SYS", false},
		{"a/b", false},
		{"a+b", false},
		{"a#", false},
		{"nul\x00", false},
		{"spa ce", false},
		{string(make([]byte, MaxDeviceIDLen+1)), false},
	} {
		if err := ValidateDeviceID(tc.id); (err == nil) != tc.ok {
			t.Errorf("ValidateDeviceID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

func TestParseTopic(t *testing.T) {
	for _, tc := range []struct {
		topic string
		want  Topic
	}{
		{"devices/d1/telemetry", Topic{Kind: TopicTelemetry, Device: "d1"}},
		{"devices/d1/commands/reboot", Topic{Kind: TopicCommand, Device: "d1", Name: "reboot"}},
		{"devices/d1/commands/#", Topic{Kind: TopicCommandFilter, Device: "d1"}},
		{"devices/d1/replies/c-9", Topic{Kind: TopicReply, Device: "d1", Name: "c-9"}},
		{"devices/d1/replies/#", Topic{Kind: TopicReplyFilter, Device: "d1"}},
		{"devices/d1/twin/desired", Topic{Kind: TopicTwinDesired, Device: "d1"}},
		{"devices/d1/twin/reported", Topic{Kind: TopicTwinReported, Device: "d1"}},
		{"devices/d1/errors", Topic{Kind: TopicErrors, Device: "d1"}},
		{"devices/+/telemetry", Topic{}},
		{"devices/#", Topic{}},
		{"#", Topic{}},
		{"$SYS/broker/clients", Topic{}},
		{"devices/d1/commands/+", Topic{}},
		{"devices/d1/commands/a/b", Topic{}},
		{"devices/d1/telemetry/extra", Topic{}},
		{"devices/d1", Topic{}},
		{"devices//telemetry", Topic{}},
	} {
		if got := ParseTopic(tc.topic); got != tc.want {
			t.Errorf("ParseTopic(%q) = %+v, want %+v", tc.topic, got, tc.want)
		}
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"devices/d1/telemetry", "devices/d1/commands/x", "devices/+/#", "$SYS/#", "devices/d1/replies/#", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp := ParseTopic(s)
		if tp.Kind == TopicUnknown {
			return
		}
		if err := ValidateDeviceID(tp.Device); err != nil {
			t.Fatalf("ParseTopic(%q) accepted bad device %q: %v", s, tp.Device, err)
		}
		// Builders must round-trip what the parser accepts.
		var back string
		switch tp.Kind {
		case TopicTelemetry:
			back = TelemetryTopic(tp.Device)
		case TopicCommand:
			back = CommandTopic(tp.Device, tp.Name)
		case TopicReply:
			back = ReplyTopic(tp.Device, tp.Name)
		default:
			return
		}
		if back != s {
			t.Fatalf("round trip %q -> %q", s, back)
		}
	})
}

func FuzzValidateDeviceID(f *testing.F) {
	for _, s := range []string{"d1", "$SYS", "a/b", "", "x:y.z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateDeviceID(id) != nil {
			return
		}
		if ParseTopic(TelemetryTopic(id)) != (Topic{Kind: TopicTelemetry, Device: id}) {
			t.Fatalf("valid id %q does not make a telemetry topic", id)
		}
	})
}
