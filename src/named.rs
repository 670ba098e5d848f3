//! Enums whose variants have names outside the program (in the database, JSON answers, the
//! audit log, alert commands' environment). `named_enum!` writes the one table from which the
//! name, the parse and the serialization all come, so a name exists exactly once.

/// Declares an enum with one `Variant = "name"` row per variant, and gives it `ALL`,
/// `as_str`, `parse` and a `Serialize` that writes the name.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_meta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }

            /// The variant named `text`, if any.
            #[allow(dead_code)]
            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|variant| variant.as_str() == text)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

pub(crate) use named_enum;
