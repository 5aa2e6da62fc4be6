package broker

import "github.com/fieldhub/fieldhub/telemetry"

// action is what a device wants to do with a topic.
type action uint8

const (
	actPublish action = iota // PUBLISH from the device
	actRead                  // SUBSCRIBE filter, or delivery of a message to the device
	actWill                  // the will message of the device's CONNECT
)

func (a action) String() string {
	switch a {
	case actPublish:
		return "publish"
	case actRead:
		return "subscribe"
	case actWill:
		return "will"
	}
	return "unknown"
}

// allowed is fieldhub's whole topic ACL (ARCHITECTURE.md §3): a device
// publishes only to its own telemetry, replies/{cmd} and twin/reported,
// and reads only its own commands (commands/# or one command), twin/desired
// and errors. Everything else is denied: other devices, wildcards anywhere
// else ('+' never), $SYS, $share and topics outside the contract.
// telemetry.ParseTopic accepts exactly the contract's shapes, so a topic it
// cannot place is denied.
func allowed(device, topic string, act action) bool {
	if telemetry.ValidateDeviceID(device) != nil {
		return false
	}
	t := telemetry.ParseTopic(topic)
	if t.Kind == telemetry.TopicUnknown || t.Device != device {
		return false
	}
	switch act {
	case actPublish, actWill:
		switch t.Kind {
		case telemetry.TopicTelemetry, telemetry.TopicReply, telemetry.TopicTwinReported:
			return true
		}
	case actRead:
		switch t.Kind {
		case telemetry.TopicCommandFilter, telemetry.TopicCommand, telemetry.TopicTwinDesired, telemetry.TopicErrors:
			return true
		}
	}
	return false
}
