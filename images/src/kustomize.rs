//! The kustomize overlay written next to the images: the repository's
//! manifests (`istio/`) as its one resource, and an `images:` entry per
//! server image that rewrites the manifests' short names (`maas-limiter`) to
//! the registry repository pinned by manifest digest. `kubectl apply -k`
//! on the output directory then deploys exactly the bytes that were built.

use std::path::{Component, Path, PathBuf};

use crate::digest::Digest;

/// One `images:` entry: the name the manifests use, where it is pushed, and
/// the manifest digest that pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub repository: String,
    pub digest: Digest,
}

/// The kustomization.yaml text for `resource` (relative to the overlay's
/// directory) and `pins`.
pub fn render(resource: &str, pins: &[Pin]) -> String {
    let mut yaml = String::from(
        "# Written by `maas-images build` (make images); rewritten on every build.\n\
         # The repository's manifests with each server image pinned by the digest\n\
         # of the manifest just built: `kubectl apply -k` on this directory after\n\
         # pushing the archives beside it.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n",
    );
    yaml.push_str(&format!("- {}\n", quote(resource)));
    yaml.push_str("images:\n");
    for pin in pins {
        yaml.push_str(&format!(
            "- name: {}\n  newName: {}\n  digest: {}\n",
            pin.name, pin.repository, pin.digest
        ));
    }
    yaml
}

/// A path as a YAML scalar: plain when it is only path characters, else
/// double-quoted with `"` and `\` escaped.
fn quote(path: &str) -> String {
    let plain = !path.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./_-".contains(&b));
    if plain {
        path.to_string()
    } else {
        format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `to` relative to the directory `from`; both absolute and normalised
/// (e.g. canonicalised), else `to` itself.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    if !from.is_absolute() || !to.is_absolute() {
        return to.to_path_buf();
    }
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    for component in &to[common..] {
        relative.push(component);
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    relative
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for (from, to, expected) in [
            ("/repo/target/images", "/repo/istio", "../../istio"),
            ("/repo", "/repo/istio", "istio"),
            ("/repo/istio", "/repo/istio", "."),
            ("/a/b", "/c", "../../c"),
            ("relative", "/c", "/c"),
        ] {
            assert_eq!(
                relative_path(Path::new(from), Path::new(to)),
                PathBuf::from(expected),
                "{from} → {to}"
            );
        }
    }

    #[test]
    fn renders_one_resource_and_a_pin_per_image() {
        let digest = Digest::of(b"manifest");
        let yaml = render(
            "../../istio",
            &[Pin {
                name: "maas-limiter".into(),
                repository: "registry.example.com/maas/maas-limiter".into(),
                digest: digest.clone(),
            }],
        );
        let body: Vec<&str> = yaml.lines().filter(|l| !l.starts_with('#')).collect();
        let pin = format!("  digest: {digest}");
        assert_eq!(
            body,
            [
                "apiVersion: kustomize.config.k8s.io/v1beta1",
                "kind: Kustomization",
                "resources:",
                "- ../../istio",
                "images:",
                "- name: maas-limiter",
                "  newName: registry.example.com/maas/maas-limiter",
                pin.as_str(),
            ]
        );
    }

    #[test]
    fn odd_paths_are_quoted() {
        assert_eq!(quote("../../istio"), "../../istio");
        assert_eq!(quote("/my dir/istio"), "\"/my dir/istio\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
