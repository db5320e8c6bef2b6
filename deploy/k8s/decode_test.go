package k8s

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	istioext "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	istionet "istio.io/client-go/pkg/apis/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

// object is one decoded manifest.
type object struct {
	kind, name string
	obj        any // *appsv1.Deployment, *corev1.Service, ... (typed)
}

// decoders maps apiVersion/kind to a constructor of the real type. A kind
// not listed is an error: the chart and render emit nothing unvalidated.
var decoders = map[string]func() any{
	"v1/ConfigMap":                                        func() any { return new(corev1.ConfigMap) },
	"v1/Service":                                          func() any { return new(corev1.Service) },
	"v1/Secret":                                           func() any { return new(corev1.Secret) },
	"apps/v1/Deployment":                                  func() any { return new(appsv1.Deployment) },
	"networking.k8s.io/v1/NetworkPolicy":                  func() any { return new(networkingv1.NetworkPolicy) },
	"extensions.istio.io/v1alpha1/WasmPlugin":             func() any { return new(istioext.WasmPlugin) },
	"networking.istio.io/v1alpha3/EnvoyFilter":            func() any { return new(istionet.EnvoyFilter) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyExtensionPolicy": func() any { return new(egv1a1.EnvoyExtensionPolicy) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyPatchPolicy":     func() any { return new(egv1a1.EnvoyPatchPolicy) },
	"gateway.envoyproxy.io/v1alpha1/EnvoyProxy":           func() any { return new(egv1a1.EnvoyProxy) },
}

// patchValue decodes the value of one of an EnvoyPatchPolicy's JSON patches
// strictly (protojson: unknown fields and unregistered Any types are
// errors) into the Envoy type the patch puts at its place: the Kubernetes
// types hold the value as raw JSON and check nothing in it. The places are
// those controlplane render uses; any other is an error, so a new kind of
// patch cannot go unvalidated.
func patchValue(p egv1a1.EnvoyJSONPatchConfig) (proto.Message, error) {
	op := p.Operation
	if op.Op != "add" || op.Value == nil {
		return nil, fmt.Errorf("patch %s %s: op %q: want add with a value", p.Type, p.Name, op.Op)
	}
	path, jsonPath := "", ""
	if op.Path != nil {
		path = *op.Path
	}
	if op.JSONPath != nil {
		jsonPath = *op.JSONPath
	}
	var m proto.Message
	switch {
	case p.Type == egv1a1.ClusterEnvoyResourceType && op.Path != nil && path == "" && jsonPath == "":
		m = new(cluster.Cluster) // a whole resource
	case p.Type == egv1a1.ListenerEnvoyResourceType && op.Path == nil && jsonPath == xds.EGRouterPath:
		m = new(hcm.HttpFilter) // an http_filters entry (the filter, or the buffer), before the router
	case p.Type == egv1a1.RouteConfigurationEnvoyResourceType && jsonPath == xds.EGVirtualHostsPath && strings.HasPrefix(path, "routes/"):
		m = new(route.Route) // a route of every virtual host
	case p.Type == egv1a1.RouteConfigurationEnvoyResourceType &&
		(path == "typed_per_filter_config/"+xds.FilterName || path == "typed_per_filter_config/"+xds.BufferFilterName):
		m = new(anypb.Any) // a named route's override
	default:
		return nil, fmt.Errorf("patch %s %s: no Envoy type known at jsonPath %q, path %q", p.Type, p.Name, jsonPath, path)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(op.Value.Raw, m); err != nil {
		return nil, fmt.Errorf("patch %s %s: value is no %T: %w", p.Type, p.Name, m, err)
	}
	return m, nil
}

// decodeStream splits a YAML stream into documents and decodes each one
// strictly (decodeStrict); empty documents (templates that render nothing)
// are skipped.
func decodeStream(src string) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(src)))
	var out []object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		o, err := decodeStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w\n%s", i, err, doc)
		}
		out = append(out, o)
	}
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			b.Write(line)
		}
	}
	return b.Bytes()
}

// decodeStrict decodes one YAML document into its real type: duplicate
// keys and unknown fields are errors at every level. Istio's generated
// UnmarshalJSON reads specs leniently (jsonpb AllowUnknownFields), so their
// specs are decoded again with protojson, which refuses unknown fields.
func decodeStrict(doc []byte) (object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return object{}, fmt.Errorf("YAML: %w", err)
	}
	var tm struct {
		metav1.TypeMeta
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(js, &tm); err != nil {
		return object{}, err
	}
	key := tm.APIVersion + "/" + tm.Kind
	mk, ok := decoders[key]
	if !ok {
		return object{}, fmt.Errorf("%s: no type to validate it against", key)
	}
	obj := mk()
	// The API server's own strict decoding: unknown fields, duplicate
	// fields and fields whose case differs (encoding/json would take
	// "rootId" for "rootID") are all errors.
	strict, err := sigsjson.UnmarshalStrict(js, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err == nil {
		err = errors.Join(strict...)
	}
	if err != nil {
		return object{}, fmt.Errorf("%s %s: %w", tm.Kind, tm.Metadata.Name, err)
	}
	var spec proto.Message
	switch o := obj.(type) {
	case *istioext.WasmPlugin:
		spec = &o.Spec
	case *istionet.EnvoyFilter:
		spec = &o.Spec
	}
	if spec != nil {
		var raw struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(js, &raw); err != nil {
			return object{}, err
		}
		proto.Reset(spec)
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw.Spec, spec); err != nil {
			return object{}, fmt.Errorf("%s %s: spec: %w", tm.Kind, tm.Metadata.Name, err)
		}
	}
	return object{kind: tm.Kind, name: tm.Metadata.Name, obj: obj}, nil
}

// byKind returns the objects of one type.
func byKind[T any](objs []object) []T {
	var out []T
	for _, o := range objs {
		if t, ok := o.obj.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
