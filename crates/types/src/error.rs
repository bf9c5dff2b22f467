//! The one public error type. Every layer returns [`Error`]; only the API edge
//! turns it into bytes, using [`ErrorKind::aws_code`] and [`ErrorKind::http_status`],
//! so the mapping to what AWS clients expect lives in exactly one table.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as an AWS client must see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    // Authentication and request shape.
    AuthFailure,
    MissingAuthenticationToken,
    IncompleteSignature,
    SignatureDoesNotMatch,
    RequestExpired,
    InvalidAction,
    MissingAction,
    MissingParameter,
    InvalidParameter,
    InvalidParameterValue,
    InvalidParameterCombination,
    UnknownParameter,
    UnsupportedOperation,
    InvalidId,
    // Key pairs.
    KeyPairNotFound,
    KeyPairDuplicate,
    KeyFormat,
    // Security groups.
    GroupNotFound,
    GroupDuplicate,
    GroupIdMalformed,
    GroupInUse,
    GroupReserved,
    CannotDelete,
    PermissionDuplicate,
    PermissionNotFound,
    PermissionMalformed,
    // Images.
    ImageNotFound,
    ImageIdMalformed,
    ImageNameDuplicate,
    ImageManifestNotFound,
    // Instances.
    InstanceNotFound,
    InstanceIdMalformed,
    InsufficientInstanceCapacity,
    IncorrectInstanceState,
    // Tags.
    TagLimitExceeded,
    // EBS.
    VolumeNotFound,
    VolumeIdMalformed,
    VolumeInUse,
    VolumeZoneMismatch,
    AttachmentLimitExceeded,
    IncorrectState,
    SnapshotNotFound,
    SnapshotInUse,
    SnapshotIdMalformed,
    AttachmentNotFound,
    // Public and elastic IPs.
    AddressNotFound,
    AllocationIdNotFound,
    AssociationIdNotFound,
    AddressAlreadyAssociated,
    InsufficientAddressCapacity,
    // Accounts (admin tooling).
    AccountNotFound,
    AccountDuplicate,
    AccessKeyNotFound,
    AccessKeyDuplicate,
    UserNotFound,
    UserDuplicate,
    DeleteConflict,
    // Anything the client could not have caused.
    Internal,
}

impl ErrorKind {
    /// The exact code string AWS uses; clients branch on it.
    pub fn aws_code(self) -> &'static str {
        use ErrorKind::*;
        match self {
            AuthFailure => "AuthFailure",
            MissingAuthenticationToken => "MissingAuthenticationToken",
            IncompleteSignature => "IncompleteSignature",
            SignatureDoesNotMatch => "SignatureDoesNotMatch",
            RequestExpired => "RequestExpired",
            InvalidAction => "InvalidAction",
            MissingAction => "MissingAction",
            MissingParameter => "MissingParameter",
            InvalidParameter => "InvalidParameter",
            InvalidParameterValue => "InvalidParameterValue",
            InvalidParameterCombination => "InvalidParameterCombination",
            UnknownParameter => "UnknownParameter",
            UnsupportedOperation => "UnsupportedOperation",
            InvalidId => "InvalidID",
            KeyPairNotFound => "InvalidKeyPair.NotFound",
            KeyPairDuplicate => "InvalidKeyPair.Duplicate",
            KeyFormat => "InvalidKey.Format",
            GroupNotFound => "InvalidGroup.NotFound",
            GroupDuplicate => "InvalidGroup.Duplicate",
            GroupIdMalformed => "InvalidGroupId.Malformed",
            GroupInUse => "InvalidGroup.InUse",
            GroupReserved => "InvalidGroup.Reserved",
            CannotDelete => "CannotDelete",
            PermissionDuplicate => "InvalidPermission.Duplicate",
            PermissionNotFound => "InvalidPermission.NotFound",
            PermissionMalformed => "InvalidPermission.Malformed",
            ImageNotFound => "InvalidAMIID.NotFound",
            ImageIdMalformed => "InvalidAMIID.Malformed",
            ImageNameDuplicate => "InvalidAMIName.Duplicate",
            ImageManifestNotFound => "InvalidManifest",
            InstanceNotFound => "InvalidInstanceID.NotFound",
            InstanceIdMalformed => "InvalidInstanceID.Malformed",
            InsufficientInstanceCapacity => "InsufficientInstanceCapacity",
            IncorrectInstanceState => "IncorrectInstanceState",
            TagLimitExceeded => "TagLimitExceeded",
            VolumeNotFound => "InvalidVolume.NotFound",
            VolumeIdMalformed => "InvalidVolumeID.Malformed",
            VolumeInUse => "VolumeInUse",
            VolumeZoneMismatch => "InvalidVolume.ZoneMismatch",
            AttachmentLimitExceeded => "AttachmentLimitExceeded",
            IncorrectState => "IncorrectState",
            SnapshotNotFound => "InvalidSnapshot.NotFound",
            SnapshotInUse => "InvalidSnapshot.InUse",
            SnapshotIdMalformed => "InvalidSnapshotID.Malformed",
            AttachmentNotFound => "InvalidAttachment.NotFound",
            AddressNotFound => "InvalidAddress.NotFound",
            AllocationIdNotFound => "InvalidAllocationID.NotFound",
            AssociationIdNotFound => "InvalidAssociationID.NotFound",
            AddressAlreadyAssociated => "Resource.AlreadyAssociated",
            InsufficientAddressCapacity => "InsufficientAddressCapacity",
            AccountNotFound => "NoSuchEntity",
            AccountDuplicate => "EntityAlreadyExists",
            AccessKeyNotFound => "NoSuchEntity",
            AccessKeyDuplicate => "EntityAlreadyExists",
            UserNotFound => "NoSuchEntity",
            UserDuplicate => "EntityAlreadyExists",
            DeleteConflict => "DeleteConflict",
            Internal => "InternalError",
        }
    }

    /// HTTP status AWS pairs with the code. botocore reads the code from the
    /// body, but retry logic looks at 5xx, so internal faults must be 500.
    pub fn http_status(self) -> u16 {
        use ErrorKind::*;
        match self {
            AuthFailure | MissingAuthenticationToken | SignatureDoesNotMatch => 401,
            RequestExpired | IncompleteSignature => 400,
            Internal => 500,
            InsufficientInstanceCapacity | InsufficientAddressCapacity => 500,
            _ => 400,
        }
    }
}

/// An error with the message a user reads next to the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn internal(message: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Internal, message.to_string())
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidParameterValue, message)
    }

    pub fn missing(param: &str) -> Self {
        Error::new(
            ErrorKind::MissingParameter,
            format!("The request must contain the parameter {param}"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.aws_code(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_aws_spelling() {
        assert_eq!(ErrorKind::GroupNotFound.aws_code(), "InvalidGroup.NotFound");
        assert_eq!(
            ErrorKind::PermissionDuplicate.aws_code(),
            "InvalidPermission.Duplicate"
        );
        assert_eq!(
            ErrorKind::KeyPairNotFound.aws_code(),
            "InvalidKeyPair.NotFound"
        );
        assert_eq!(ErrorKind::KeyFormat.aws_code(), "InvalidKey.Format");
        assert_eq!(ErrorKind::InvalidId.aws_code(), "InvalidID");
        assert_eq!(ErrorKind::Internal.http_status(), 500);
        assert_eq!(ErrorKind::AuthFailure.http_status(), 401);
        assert_eq!(ErrorKind::InvalidParameterValue.http_status(), 400);
    }

    #[test]
    fn display_shows_code_and_message() {
        let e = Error::missing("GroupName");
        assert_eq!(
            e.to_string(),
            "MissingParameter: The request must contain the parameter GroupName"
        );
    }
}
