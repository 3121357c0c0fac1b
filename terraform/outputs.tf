# What CATs reads (cats/plant/deployment.py): `terraform output -json > outputs.json`, then
# `cats run ORDER.py --deployment outputs.json`. The addresses resolve inside the cluster only.

locals {
  head_host = "${helm_release.ray_cluster.name}-head-svc.${helm_release.ray_cluster.namespace}.svc.cluster.local"
}

output "ray_address" {
  description = "Ray Client address of the head, for the Plant (ray.init)."
  value       = "ray://${local.head_host}:10001"
}

output "ray_dashboard" {
  description = "Ray dashboard (and job submission) URL."
  value       = "http://${local.head_host}:8265"
}

output "ipfs_api" {
  description = "kubo RPC API of the cluster's block store, for CATS_IPFS_API."
  value       = local.ipfs_api
}

output "ipfs_gateway" {
  description = "HTTP gateway of the IPFS node: any CID of a run, readable at /ipfs/<cid>."
  value       = "http://${kubernetes_service_v1.kubo.metadata[0].name}.${kubernetes_namespace_v1.cats.metadata[0].name}.svc.cluster.local:${local.kubo_ports.gateway}"
}

output "namespace" {
  description = "Namespace of the deployment."
  value       = kubernetes_namespace_v1.cats.metadata[0].name
}

output "store_resource" {
  description = "Ray resource the workers advertise for their block store."
  value       = "cats-store:${var.store_name}"
}
