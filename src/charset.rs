//! Legacy character sets at the edges of the bus: 1C-Bitrix sites in windows-1251, old
//! systems in KOI8-R. Inside the bus everything is UTF-8; a body that declares another
//! `charset` on its `Content-Type` is decoded to UTF-8 before any check runs, and a
//! subscription may ask for its bodies re-encoded ([`encode`]).
//!
//! Labels are those of the WHATWG Encoding Standard (`windows-1251`, `cp1251`, `koi8-r`,
//! `latin1`, …), resolved by `encoding_rs`, which implements it. Two consequences worth
//! knowing: `latin1` and `iso-8859-1` name windows-1252 (as in every browser), and the labels
//! the standard maps to its "replacement" encoding (`iso-2022-kr`, `hz-gb-2312`, …) are
//! refused, since that encoding decodes nothing. Decoding never substitutes: a byte
//! sequence that is not valid in the declared charset is refused (`undecodable-body`), so
//! what is stored is exactly what was sent.

use std::borrow::Cow;

use bytes::Bytes;
use encoding_rs::{DecoderResult, EncoderResult, Encoding, UTF_8};

use crate::problem::{Problem, ProblemType};

/// A charset named on a `Content-Type`, resolved; `None` from [`of_content_type`] means
/// UTF-8 (absent, or named as such).
pub type Charset = &'static Encoding;

/// The `charset` parameter of a `Content-Type` value, when it names something other than
/// UTF-8.
///
/// # Errors
/// `unsupported-media-type` for a label the Encoding Standard does not know, or one it maps
/// to the replacement encoding.
pub fn of_content_type(value: Option<&str>) -> Result<Option<Charset>, Problem> {
    let Some(label) = value.and_then(charset_param) else { return Ok(None) };
    let encoding = label_to_encoding(&label)?;
    Ok((encoding != UTF_8).then_some(encoding))
}

/// Resolves a WHATWG label (case-insensitive, surrounding whitespace ignored).
///
/// # Errors
/// `unsupported-media-type` as for [`of_content_type`].
pub fn label_to_encoding(label: &str) -> Result<Charset, Problem> {
    match Encoding::for_label_no_replacement(label.trim().as_bytes()) {
        Some(encoding) => Ok(encoding),
        None if Encoding::for_label(label.trim().as_bytes()).is_some() => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!("charset {label:?} names the Encoding Standard's replacement encoding, which decodes nothing"),
        )),
        None => Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!(
                "charset {label:?} is not a label of the WHATWG Encoding Standard (e.g. utf-8, windows-1251, koi8-r)"
            ),
        )),
    }
}

/// The value of a `charset=` parameter (RFC 9110 §5.6.6: name case-insensitive, value a
/// token or a quoted string).
fn charset_param(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        Some(value.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

/// The body in UTF-8: as received when `charset` is `None` (UTF-8 is checked later, with
/// the other checks), else decoded. A byte-order mark of the declared charset is dropped.
///
/// # Errors
/// `undecodable-body` naming the charset and the byte offset of the first bad sequence.
pub fn to_utf8(body: Bytes, charset: Option<Charset>) -> Result<Bytes, Problem> {
    let Some(encoding) = charset else { return Ok(body) };
    decode(&body, encoding).map(|text| Bytes::from(text.into_bytes()))
}

/// Decodes `bytes` from `encoding` without substituting anything.
///
/// # Errors
/// `undecodable-body` at the first malformed sequence.
pub fn decode(bytes: &[u8], encoding: Charset) -> Result<String, Problem> {
    let bytes = match Encoding::for_bom(bytes) {
        Some((bom, len)) if bom == encoding => &bytes[len..],
        _ => bytes,
    };
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut text = String::with_capacity(decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(0));
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut text, true);
    match result {
        DecoderResult::InputEmpty => Ok(text),
        DecoderResult::Malformed(bad, pending) => {
            let at = read.saturating_sub(usize::from(bad) + usize::from(pending));
            Err(Problem::new(
                ProblemType::UndecodableBody,
                format!("the body is not valid {} at byte {at}", encoding.name()),
            ))
        }
        // The buffer was sized for the worst case; a short buffer would be a bug here.
        DecoderResult::OutputFull => Err(Problem::new(ProblemType::Internal, "internal error")),
    }
}

/// A form-encoded body whose percent-decoded bytes are in `charset`, rewritten as the same
/// form in UTF-8 (what `form_urlencoded::parse` reads). Each pair is decoded after its
/// percent-decoding, as the form's sender encoded it before percent-encoding. The
/// Encoding Standard's rule for forms applies: UTF-16 forms are UTF-8.
///
/// # Errors
/// `undecodable-body` naming the pair (by its position) that is not valid in `charset`.
pub fn form_to_utf8(body: &[u8], charset: Charset) -> Result<Vec<u8>, Problem> {
    let charset = charset.output_encoding();
    if charset == UTF_8 {
        return Ok(body.to_vec());
    }
    let mut out = form_urlencoded::Serializer::new(String::with_capacity(body.len()));
    for (index, pair) in body.split(|b| *b == b'&').filter(|p| !p.is_empty()).enumerate() {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let decode_part = |part: &[u8]| {
            let raw = form_unescape(part);
            decode(&raw, charset).map_err(|_| {
                Problem::new(
                    ProblemType::UndecodableBody,
                    format!("form field {} is not valid {} once percent-decoded", index + 1, charset.name()),
                )
            })
        };
        out.append_pair(&decode_part(name)?, &decode_part(value)?);
    }
    Ok(out.finish().into_bytes())
}

/// One side of a form pair as bytes: `+` is a space, `%XX` a byte.
fn form_unescape(part: &[u8]) -> Cow<'_, [u8]> {
    if !part.contains(&b'+') && !part.contains(&b'%') {
        return Cow::Borrowed(part);
    }
    let spaced: Vec<u8> = part.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
    Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
}

/// The value of one form field in `charset`, found by a scan of the raw pairs (nothing is
/// built): for a secret that must be checked before the form is (Bitrix24's token). The first
/// occurrence counts; a value that does not decode counts as absent.
#[must_use]
pub fn form_field(body: &[u8], key: &str, charset: Option<Charset>) -> Option<String> {
    let charset = charset.map_or(UTF_8, Encoding::output_encoding);
    body.split(|b| *b == b'&').find_map(|pair| {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        // The key is ASCII: the same bytes in every ASCII-compatible charset.
        let name = form_unescape(name);
        if name.as_ref() != key.as_bytes() {
            return None;
        }
        let value = form_unescape(value);
        Some(if charset == UTF_8 {
            String::from_utf8_lossy(&value).into_owned()
        } else {
            decode(&value, charset).unwrap_or_default()
        })
    })
}

/// Why a body could not be put in a subscription's charset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{character:?} (U+{code:04X}) at byte {at} of the body cannot be written in {charset}")]
pub struct Unencodable {
    pub character: char,
    pub code: u32,
    /// Byte offset in the UTF-8 body.
    pub at: usize,
    pub charset: &'static str,
}

/// `text` (UTF-8) encoded in `charset`, with no substitution: a character the charset cannot
/// represent is an error, never a `?` or an HTML numeric reference (which is what
/// `Encoding::encode` would write).
///
/// # Errors
/// [`Unencodable`] naming the first such character; non-UTF-8 input is reported as U+FFFD
/// at the first bad byte.
pub fn encode(body: &[u8], charset: Charset) -> Result<Vec<u8>, Unencodable> {
    let text = std::str::from_utf8(body).map_err(|e| Unencodable {
        character: char::REPLACEMENT_CHARACTER,
        code: 0xFFFD,
        at: e.valid_up_to(),
        charset: charset.name(),
    })?;
    let charset = charset.output_encoding();
    if charset == UTF_8 {
        return Ok(body.to_vec());
    }
    let mut encoder = charset.new_encoder();
    let mut out = Vec::with_capacity(
        encoder.max_buffer_length_from_utf8_without_replacement(text.len()).unwrap_or(text.len() * 4),
    );
    let (result, read) = encoder.encode_from_utf8_to_vec_without_replacement(text, &mut out, true);
    match result {
        EncoderResult::InputEmpty => Ok(out),
        EncoderResult::Unmappable(character) => Err(Unencodable {
            character,
            code: u32::from(character),
            at: read - character.len_utf8(),
            charset: charset.name(),
        }),
        // Sized for the worst case; cannot happen.
        EncoderResult::OutputFull => Err(Unencodable { character: '\0', code: 0, at: read, charset: charset.name() }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn labels_follow_the_encoding_standard() {
        let name = |ct: &str| of_content_type(Some(ct)).map(|e| e.map(Encoding::name));
        assert_eq!(name("application/json").unwrap(), None);
        assert_eq!(name("application/json; charset=utf-8").unwrap(), None);
        assert_eq!(name("application/json; charset=UTF8").unwrap(), None);
        assert_eq!(name("application/json;charset=windows-1251").unwrap(), Some("windows-1251"));
        assert_eq!(name("application/json; CHARSET=\"cp1251\"").unwrap(), Some("windows-1251"));
        assert_eq!(name("application/x-www-form-urlencoded; charset=koi8-r").unwrap(), Some("KOI8-R"));
        assert_eq!(name("application/json; charset=latin1").unwrap(), Some("windows-1252"));
        assert_eq!(name("application/json; charset= utf-16le ").unwrap(), Some("UTF-16LE"));
        for bad in ["application/json; charset=klingon", "application/json; charset=iso-2022-kr", "x; charset="] {
            assert_eq!(of_content_type(Some(bad)).unwrap_err().kind, ProblemType::UnsupportedMediaType, "{bad}");
        }
    }

    #[test]
    fn windows_1251_and_koi8_r_decode_and_bad_bytes_are_refused() {
        let (cp1251, _, _) = encoding_rs::WINDOWS_1251.encode("{\"name\":\"Шираз\"}");
        assert_eq!(decode(&cp1251, encoding_rs::WINDOWS_1251).unwrap(), "{\"name\":\"Шираз\"}");
        let (koi, _, _) = encoding_rs::KOI8_R.encode("Мерло");
        assert_eq!(decode(&koi, encoding_rs::KOI8_R).unwrap(), "Мерло");
        // The Encoding Standard maps every byte of windows-1251 and KOI8-R to a character; the
        // multi-byte charsets have malformed sequences: 0x81 must be followed by a trail byte.
        let err = decode(b"{\"a\":\"\x81 \"}", encoding_rs::SHIFT_JIS).unwrap_err();
        assert_eq!(err.kind, ProblemType::UndecodableBody);
        assert_eq!(err.detail, "the body is not valid Shift_JIS at byte 6");
        assert!(decode(&(0..=255).collect::<Vec<u8>>(), encoding_rs::WINDOWS_1251).is_ok());
        // An odd byte at the end of UTF-16.
        assert_eq!(
            decode(b"{\x00}", encoding_rs::UTF_16LE).unwrap_err().detail,
            "the body is not valid UTF-16LE at byte 2"
        );
        // A lone UTF-16 surrogate.
        assert_eq!(decode(b"\x00\xd8\x41\x00", encoding_rs::UTF_16LE).unwrap_err().kind, ProblemType::UndecodableBody);
        // A BOM of the declared charset is not data.
        assert_eq!(decode(b"\xff\xfe{\x00}\x00", encoding_rs::UTF_16LE).unwrap(), "{}");
    }

    #[test]
    fn forms_are_decoded_after_percent_decoding() {
        // "Шираз" in windows-1251, percent-encoded, and a raw high byte in a key.
        let form = b"data[FIELDS][TITLE]=%D8%E8%F0%E0%E7+%B9+5&auth[application_token]=abc&\xcf=1";
        let utf8 = form_to_utf8(form, encoding_rs::WINDOWS_1251).unwrap();
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(&utf8).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        assert_eq!(pairs[0], ("data[FIELDS][TITLE]".to_owned(), "Шираз № 5".to_owned()));
        assert_eq!(pairs[1], ("auth[application_token]".to_owned(), "abc".to_owned()));
        assert_eq!(pairs[2], ("П".to_owned(), "1".to_owned()));
        let err = form_to_utf8(b"a=1&b=%81%20", encoding_rs::SHIFT_JIS).unwrap_err();
        assert_eq!(err.detail, "form field 2 is not valid Shift_JIS once percent-decoded");
        assert_eq!(
            form_field(form, "auth[application_token]", Some(encoding_rs::WINDOWS_1251)).as_deref(),
            Some("abc")
        );
        assert_eq!(
            form_field(b"auth%5Bapplication_token%5D=x&auth[application_token]=y", "auth[application_token]", None)
                .as_deref(),
            Some("x")
        );
        assert_eq!(form_field(b"a=1", "auth[application_token]", None), None);
    }

    #[test]
    fn encoding_never_substitutes() {
        let out = encode("Шираз Ёлка".as_bytes(), encoding_rs::WINDOWS_1251).unwrap();
        assert_eq!(encoding_rs::WINDOWS_1251.decode_without_bom_handling(&out).0, "Шираз Ёлка");
        let err = encode("вино 🍷".as_bytes(), encoding_rs::WINDOWS_1251).unwrap_err();
        assert_eq!((err.character, err.at, err.charset), ('🍷', 9, "windows-1251"));
        assert!(err.to_string().contains("U+1F377"));
        assert_eq!(encode(b"{}", encoding_rs::UTF_16LE).unwrap(), b"{}", "UTF-16 is written as UTF-8");
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), which in 0usize..6) {
            let enc = [encoding_rs::WINDOWS_1251, encoding_rs::KOI8_R, encoding_rs::SHIFT_JIS, encoding_rs::UTF_16BE, encoding_rs::GBK, encoding_rs::EUC_KR][which];
            let _ = decode(&bytes, enc);
            let _ = form_to_utf8(&bytes, enc);
            let _ = form_field(&bytes, "a", Some(enc));
        }

        #[test]
        fn cyrillic_round_trips(text in "[ -~а-яА-ЯёЁ]{0,64}", sign in "№?") {
            // № is in windows-1251, not in KOI8-R.
            let with_sign = format!("{text}{sign}");
            let bytes = encode(with_sign.as_bytes(), encoding_rs::WINDOWS_1251).unwrap();
            prop_assert_eq!(decode(&bytes, encoding_rs::WINDOWS_1251).unwrap(), with_sign);
            let bytes = encode(text.as_bytes(), encoding_rs::KOI8_R).unwrap();
            prop_assert_eq!(decode(&bytes, encoding_rs::KOI8_R).unwrap(), text);
        }
    }
}
