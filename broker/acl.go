package broker

import (
	"context"

	"github.com/fieldhub/fieldhub/telemetry"
)

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

// Allowed is the topic ACL above, exported so that an external broker's
// authorization hook (dashboard/brokerauth.go) decides exactly as the
// embedded broker does. publish true asks whether device may publish to
// topic (or use it as its will topic); false whether it may subscribe to
// the filter topic, or receive a message published on it.
func Allowed(device, topic string, publish bool) bool {
	if publish {
		return allowed(device, topic, actPublish)
	}
	return allowed(device, topic, actRead)
}

// Reasons a device's CONNECT is refused, as CheckDevice returns them (and
// as the fieldhub_mqtt_auth_failures_total metric labels them).
const (
	RefusedAnonymous        = "anonymous"
	RefusedNoPassword       = "no_password"
	RefusedInvalidUsername  = "invalid_username"
	RefusedClientIDMismatch = "client_id_mismatch"
	RefusedBadCredentials   = "bad_credentials"
)

// CheckDevice is the embedded broker's CONNECT decision (ARCHITECTURE.md
// §3): no anonymous access, username = a valid device id, password = its
// token, client id = the username. It returns "" to accept, else one of
// the Refused* reasons; err means the token could not be checked (the
// registry failed), which is neither an accept nor a refusal. Exported so
// that the HTTP authentication hook for an external broker decides the
// same way.
func CheckDevice(ctx context.Context, auth Authenticator, clientID, username, password string) (reason string, err error) {
	switch {
	case username == "":
		return RefusedAnonymous, nil
	case password == "":
		return RefusedNoPassword, nil
	case telemetry.ValidateDeviceID(username) != nil:
		return RefusedInvalidUsername, nil
	case clientID != username:
		return RefusedClientIDMismatch, nil
	}
	ok, err := auth.AuthenticateDevice(ctx, username, password)
	if err != nil {
		return "", err
	}
	if !ok {
		return RefusedBadCredentials, nil
	}
	return "", nil
}
