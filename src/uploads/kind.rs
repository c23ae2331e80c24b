//! The image formats uploads may have (recognised by their first bytes) and the names they are
//! stored under (`<id>.<ext>`, the extension of the detected format).

/// Bytes needed to recognise every accepted format.
pub const SNIFF_BYTES: usize = 12;

/// An accepted image format: file extension and content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageKind {
    pub ext: &'static str,
    pub content_type: &'static str,
}

const PNG: ImageKind = ImageKind {
    ext: "png",
    content_type: "image/png",
};
const JPEG: ImageKind = ImageKind {
    ext: "jpg",
    content_type: "image/jpeg",
};
const GIF: ImageKind = ImageKind {
    ext: "gif",
    content_type: "image/gif",
};
const WEBP: ImageKind = ImageKind {
    ext: "webp",
    content_type: "image/webp",
};

/// Recognises an image by its magic bytes.
pub fn sniff(head: &[u8]) -> Option<ImageKind> {
    if head.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        Some(PNG)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(JPEG)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(GIF)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(WEBP)
    } else {
        None
    }
}

/// The kind of a stored file's name, if the name is exactly `<digits>.<ext>`.
pub fn kind_of_name(name: &str) -> Option<ImageKind> {
    let (stem, ext) = name.split_once('.')?;
    if stem.is_empty() || stem.len() > 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    [PNG, JPEG, GIF, WEBP].into_iter().find(|k| k.ext == ext)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_each_format_by_its_bytes() {
        assert_eq!(
            sniff(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0]),
            Some(PNG)
        );
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(JPEG));
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some(GIF));
        assert_eq!(sniff(b"GIF87a"), Some(GIF));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WEBPVP8 "), Some(WEBP));
        assert_eq!(sniff(b"RIFF\x10\x00\x00\x00WAVE"), None);
        assert_eq!(sniff(b"hello, this is text"), None);
        assert_eq!(sniff(&[0x89, b'P', b'N', b'G']), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn only_generated_names_are_served() {
        assert_eq!(kind_of_name("123.png"), Some(PNG));
        assert_eq!(kind_of_name("123.webp"), Some(WEBP));
        for bad in [
            "../Cargo.toml",
            "..",
            "123.png/..",
            "/etc/passwd",
            "a1.png",
            ".1.part",
            "1.txt",
            "1.PNG",
            "1",
            "123.png.exe",
            "",
        ] {
            assert_eq!(kind_of_name(bad), None, "{bad}");
        }
    }
}
