"""A whole CSI volume lifecycle against berth-csi from a gRPC C-core client.

Python's grpcio is gRPC C-core underneath: over a unix socket it sends the
socket path as the HTTP/2 :authority, as the C++, Ruby and Java clients do.
This script is what such a client does: stubs generated from Berth's own
proto/proto/csi.proto with grpcio-tools, then Identity, CreateVolume,
ControllerPublish, NodeStage, NodePublish, a file written and read back
through the published path, and every call back down to DeleteVolume.

usage: csi_lifecycle.py ENDPOINT PROTO_DIR WORK_DIR
  ENDPOINT   unix:///path/to/csi.sock (or unix:/path)
  PROTO_DIR  the directory holding csi.proto
  WORK_DIR   scratch space: generated stubs, staging and target paths
Exits 0 when every step passed; prints one line per step.
"""

import os
import sys
import time

import grpc
from grpc_tools import protoc


def generate(proto_dir, out):
    os.makedirs(out, exist_ok=True)
    # grpcio-tools ships the well-known types (google/protobuf/*.proto).
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}",
        f"--grpc_python_out={out}", os.path.join(proto_dir, "csi.proto"),
    ])
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with {rc}")
    sys.path.insert(0, out)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    endpoint, proto_dir, work = sys.argv[1:]
    generate(proto_dir, os.path.join(work, "stubs"))
    import csi_pb2 as pb
    import csi_pb2_grpc as rpc

    channel = grpc.insecure_channel(endpoint)
    ident, ctrl, node = rpc.IdentityStub(channel), rpc.ControllerStub(channel), rpc.NodeStub(channel)

    def step(name, call):
        t0 = time.monotonic()
        try:
            out = call()
        except grpc.RpcError as e:
            print(f"{name}: FAILED {e.code().name}: {e.details()}")
            sys.exit(1)
        print(f"{name}: ok ({(time.monotonic() - t0) * 1000:.1f} ms)")
        return out

    info = step("GetPluginInfo", lambda: ident.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10))
    assert info.name == "csi.berth.dev", info.name
    step("Probe", lambda: ident.Probe(pb.ProbeRequest(), timeout=10))
    step("GetPluginCapabilities", lambda: ident.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=10))
    node_info = step("NodeGetInfo", lambda: node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10))

    mount_cap = pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )
    vol = step("CreateVolume", lambda: ctrl.CreateVolume(pb.CreateVolumeRequest(
        name="python-grpcio-lifecycle",
        capacity_range=pb.CapacityRange(required_bytes=64 << 20),
        volume_capabilities=[mount_cap],
        parameters={"backend": "local"},
    ), timeout=60)).volume
    pub = step("ControllerPublishVolume", lambda: ctrl.ControllerPublishVolume(pb.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id=node_info.node_id, volume_capability=mount_cap,
    ), timeout=60))
    staging = os.path.join(work, "staging")
    target = os.path.join(work, "target")
    os.makedirs(staging, exist_ok=True)
    step("NodeStageVolume", lambda: node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=staging, volume_capability=mount_cap,
        publish_context=pub.publish_context, volume_context=vol.volume_context,
    ), timeout=120))
    step("NodePublishVolume", lambda: node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=staging, target_path=target,
        volume_capability=mount_cap, publish_context=pub.publish_context,
        volume_context=vol.volume_context,
    ), timeout=60))
    payload = b"written by a gRPC C-core client\n"
    with open(os.path.join(target, "hello.txt"), "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(target, "hello.txt"), "rb") as f:
        assert f.read() == payload
    print("write+read through the published path: ok")
    stats = step("NodeGetVolumeStats", lambda: node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(
        volume_id=vol.volume_id, volume_path=target), timeout=30))
    assert any(u.total > 0 for u in stats.usage), stats
    step("NodeUnpublishVolume", lambda: node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
        volume_id=vol.volume_id, target_path=target), timeout=60))
    step("NodeUnstageVolume", lambda: node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=staging), timeout=60))
    step("ControllerUnpublishVolume", lambda: ctrl.ControllerUnpublishVolume(pb.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id=node_info.node_id), timeout=60))
    step("DeleteVolume", lambda: ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id), timeout=60))
    print("lifecycle: ok")


if __name__ == "__main__":
    main()
