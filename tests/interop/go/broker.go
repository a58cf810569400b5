package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

const brokerService = "spiffe.broker.API"

// brokerMethod finds METHOD of spiffe.broker.API in a FileDescriptorSet file (protoc
// --include_imports --descriptor_set_out): no generated Go stubs, the wire types come from
// the very .proto the agent serves.
func brokerMethod(descriptorSet, name string) (protoreflect.MethodDescriptor, *protoregistry.Files, error) {
	data, err := os.ReadFile(descriptorSet)
	if err != nil {
		return nil, nil, err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("descriptor set %s: %w", descriptorSet, err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, nil, fmt.Errorf("descriptor set %s: %w", descriptorSet, err)
	}
	found, err := files.FindDescriptorByName(brokerService)
	if err != nil {
		return nil, nil, fmt.Errorf("%s in %s: %w", brokerService, descriptorSet, err)
	}
	method := found.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(name))
	if method == nil {
		return nil, nil, fmt.Errorf("%s has no method %q", brokerService, name)
	}
	return method, files, nil
}

// newMessage is an empty dynamic message of the type `name` in `files`.
func newMessage(files *protoregistry.Files, name string) (*dynamicpb.Message, error) {
	found, err := files.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, fmt.Errorf("message %s: %w", name, err)
	}
	return dynamicpb.NewMessage(found.(protoreflect.MessageDescriptor)), nil
}

// brokerRequest builds the request: a WorkloadPIDReference packed in an Any (under
// typeURL when given, to name a type the agent does not resolve), and the audience.
func brokerRequest(method protoreflect.MethodDescriptor, files *protoregistry.Files, pid int, typeURL string, audience []string) (*dynamicpb.Message, error) {
	request := dynamicpb.NewMessage(method.Input())
	fields := method.Input().Fields()
	if pid != 0 {
		reference, err := newMessage(files, "spiffe.broker.WorkloadPIDReference")
		if err != nil {
			return nil, err
		}
		reference.Set(reference.Descriptor().Fields().ByName("pid"), protoreflect.ValueOfInt32(int32(pid)))
		value, err := proto.Marshal(reference)
		if err != nil {
			return nil, err
		}
		if typeURL == "" {
			typeURL = "type.googleapis.com/spiffe.broker.WorkloadPIDReference"
		}
		packed, err := newMessage(files, "google.protobuf.Any")
		if err != nil {
			return nil, err
		}
		packed.Set(packed.Descriptor().Fields().ByName("type_url"), protoreflect.ValueOfString(typeURL))
		packed.Set(packed.Descriptor().Fields().ByName("value"), protoreflect.ValueOfBytes(value))
		holder := fields.ByName("reference")
		wrapper := dynamicpb.NewMessage(holder.Message())
		wrapper.Set(holder.Message().Fields().ByName("reference"), protoreflect.ValueOfMessage(packed))
		request.Set(holder, protoreflect.ValueOfMessage(wrapper))
	}
	if len(audience) > 0 {
		list := request.Mutable(fields.ByName("audience")).List()
		for _, aud := range audience {
			list.Append(protoreflect.ValueOfString(aud))
		}
	}
	return request, nil
}

// runBroker acts as a SPIFFE broker: its own X509-SVID from the Workload API, mTLS to the
// Broker endpoint authorizing the agent's SPIFFE ID, one call. It prints
// {"event":"message","message":<protojson>} per response, then {"event":"end","code":...,
// "details":...}: a refused call is a result, not a failure of this program.
func runBroker(ctx context.Context, args []string) (any, error) {
	flags := flag.NewFlagSet("broker", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	pid := flags.Int("pid", 0, "the referenced workload's pid (0: no reference)")
	typeURL := flags.String("type-url", "", "the reference's Any type URL")
	noHeader := flags.Bool("no-header", false, "leave out broker.spiffe.io: true")
	noCert := flags.Bool("no-cert", false, "TLS without a client certificate")
	seconds := flags.Duration("for", 90*time.Second, "how long the call may last")
	forge := flags.String("forge", "", "present an X509-SVID for this SPIFFE ID from a CA of our own")
	var audience multi
	flags.Var(&audience, "audience", "a JWT audience (repeatable)")
	if len(args) < 4 {
		return nil, errors.New("broker needs SOCKET AGENT_ID DESCRIPTOR_SET METHOD [flags]")
	}
	socket, agentID, descriptorSet, name := args[0], args[1], args[2], args[3]
	if err := flags.Parse(args[4:]); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), *seconds)
	defer cancel()
	expected, err := spiffeid.FromString(agentID)
	if err != nil {
		return nil, fmt.Errorf("agent SPIFFE ID %q: %w", agentID, err)
	}
	method, files, err := brokerMethod(descriptorSet, name)
	if err != nil {
		return nil, err
	}
	request, err := brokerRequest(method, files, *pid, *typeURL, audience)
	if err != nil {
		return nil, err
	}
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return nil, fmt.Errorf("the broker's own X509-SVID: %w", err)
	}
	defer source.Close()
	// AuthorizeID decides; the wrapper only notes the certificate the agent presented.
	var served *x509.Certificate
	authorize := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		served = chains[0][0]
		return tlsconfig.AuthorizeID(expected)(id, chains)
	}
	var own x509svid.Source = source
	if *forge != "" {
		if own, err = forgedSVID(*forge); err != nil {
			return nil, err
		}
	}
	var creds credentials.TransportCredentials
	if *noCert {
		creds = grpccredentials.TLSClientCredentials(source, authorize)
	} else {
		creds = grpccredentials.MTLSClientCredentials(own, source, authorize)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("grpc.NewClient: %w", err)
	}
	defer conn.Close()
	if !*noHeader {
		ctx = metadata.AppendToOutgoingContext(ctx, "broker.spiffe.io", "true")
	}
	fullMethod := "/" + brokerService + "/" + name
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, fullMethod)
	if err == nil {
		err = stream.SendMsg(request)
	}
	if err == nil {
		err = stream.CloseSend()
	}
	for err == nil {
		response := dynamicpb.NewMessage(method.Output())
		if err = stream.RecvMsg(response); err != nil {
			break
		}
		text, marshalErr := protojson.Marshal(response)
		if marshalErr != nil {
			return nil, marshalErr
		}
		emit(map[string]any{"event": "message", "message": json.RawMessage(text)})
	}
	end := map[string]any{"event": "end", "code": "OK", "details": ""} // grpc-go's name too
	if !errors.Is(err, io.EOF) {
		got := status.Convert(err)
		end["code"], end["details"] = got.Code().String(), got.Message()
	}
	// Who answered (the agent's SVID as this handshake saw it) and who asked.
	if served != nil {
		end["server"] = map[string]any{"serial": served.SerialNumber.String(), "issuer_key_id": issuerKeyID(served)}
	}
	if presented, err := own.GetX509SVID(); err == nil && !*noCert {
		end["client"] = describeSVID(presented)
	}
	return end, nil
}

// forgedSVID is a well-formed X509-SVID for `id` whose CA is not in any bundle the agent
// holds: only chain verification can tell it from the real one.
func forgedSVID(id string) (*x509svid.SVID, error) {
	spiffeID, err := spiffeid.FromString(id)
	if err != nil {
		return nil, fmt.Errorf("forged SPIFFE ID %q: %w", id, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca, err := certificate(spiffeID.TrustDomain().IDString(), key, nil, nil)
	if err != nil {
		return nil, err
	}
	return mintSVID(spiffeID, ca, key)
}

type multi []string

func (m *multi) String() string     { return fmt.Sprint(*m) }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
